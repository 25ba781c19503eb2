-- vmattest server schema v1 (SQLite). Times are Unix seconds; digests and keys raw bytes.
CREATE TABLE tokens (
    hash BLOB PRIMARY KEY,
    role TEXT NOT NULL,
    host TEXT,
    created BIGINT NOT NULL
);
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    public_key_pem TEXT NOT NULL,
    key_id TEXT NOT NULL,
    tpm_backed BIGINT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    toml TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL REFERENCES hosts(name),
    policy_id TEXT NOT NULL REFERENCES policies(id),
    subsets TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    on_alert TEXT NOT NULL,
    webhook_url TEXT,
    webhook_secret TEXT,
    created BIGINT NOT NULL
);
CREATE TABLE baselines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL REFERENCES vms(name),
    policy_id TEXT NOT NULL REFERENCES policies(id),
    pages BLOB NOT NULL,
    provenance TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX baselines_vm ON baselines(vm, id);
-- Nonces are self-authenticating (MAC under the server's nonce key); a row here marks one used.
CREATE TABLE used_nonces (
    nonce BLOB PRIMARY KEY,
    vm TEXT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX used_nonces_expires ON used_nonces(expires);
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    time BIGINT NOT NULL,
    nonce BLOB NOT NULL,
    score BIGINT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    evidence BLOB NOT NULL
);
CREATE INDEX results_vm ON results(vm, id);
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    result_id BIGINT NOT NULL,
    time BIGINT NOT NULL,
    score BIGINT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    delivered BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL
);
CREATE INDEX alerts_pending ON alerts(delivered, next_attempt);
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    seq BIGINT NOT NULL,
    verdict TEXT NOT NULL,
    time BIGINT NOT NULL,
    report BLOB NOT NULL
);
CREATE TABLE snapshot_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    seq BIGINT NOT NULL,
    nonce BLOB NOT NULL UNIQUE,
    requested BIGINT NOT NULL,
    report_id BIGINT
);
CREATE INDEX snapshot_requests_vm ON snapshot_requests(vm, report_id);
