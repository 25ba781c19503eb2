-- vmattest server schema v2 (SQLite): one reference configuration (TOML) per VM.
CREATE TABLE reference_configs (
    vm TEXT PRIMARY KEY,
    toml TEXT NOT NULL,
    created BIGINT NOT NULL
);
