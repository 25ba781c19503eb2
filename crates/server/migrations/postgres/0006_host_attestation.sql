-- vmattest server schema v6: host attestation. A host registered with a TPM binding keeps its
-- attestation key (TPMT_PUBLIC) and belongs to a group; each group may have a host policy; every
-- appraisal of a host's quote is kept with its EAR. A VM's chain secret may be held, sealed, for
-- release to hosts whose quote passes (attested key release), and each release is recorded.
ALTER TABLE hosts ADD COLUMN ak BYTEA;
ALTER TABLE hosts ADD COLUMN ek BYTEA;
ALTER TABLE hosts ADD COLUMN host_group TEXT NOT NULL DEFAULT 'default';
CREATE TABLE host_policies (
    host_group TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE host_results (
    id BIGSERIAL PRIMARY KEY,
    host TEXT NOT NULL REFERENCES hosts(name),
    host_group TEXT NOT NULL,
    time BIGINT NOT NULL,
    status TEXT NOT NULL,
    mismatches TEXT NOT NULL,
    ear TEXT NOT NULL
);
CREATE INDEX host_results_host ON host_results(host, id);
CREATE TABLE vm_keys (
    vm TEXT PRIMARY KEY REFERENCES vms(name),
    sealed BYTEA NOT NULL,
    release_to TEXT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE TABLE key_releases (
    id BIGSERIAL PRIMARY KEY,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    time BIGINT NOT NULL,
    host_result BIGINT NOT NULL
);
