-- vmattest server schema v2 (PostgreSQL): one reference configuration (TOML) per VM.
CREATE TABLE reference_configs (
    vm TEXT PRIMARY KEY,
    toml TEXT NOT NULL,
    created BIGINT NOT NULL
);
