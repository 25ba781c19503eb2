-- vmattest server schema v5: the bytes of a baseline's regions (zstd), so that a region that
-- no longer matches can be named down to page and offset. Optional per baseline and region.
CREATE TABLE baseline_bytes (
    baseline BIGINT NOT NULL REFERENCES baselines(id),
    region TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (baseline, region)
);
