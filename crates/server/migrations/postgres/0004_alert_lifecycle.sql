-- vmattest server schema v4: one active alert per VM and cause. A repeat of the same cause
-- raises the count of the active alert instead of adding a row; an acknowledged alert stays
-- active (it still absorbs repeats) until a result at or above the threshold resolves it.
ALTER TABLE alerts ADD COLUMN cause TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE alerts ADD COLUMN last_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN last_result_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN acknowledged_time BIGINT;
ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
ALTER TABLE alerts ADD COLUMN resolved_time BIGINT;
ALTER TABLE alerts ADD COLUMN webhook BIGINT NOT NULL DEFAULT 0;
UPDATE alerts SET last_time = time, last_result_id = result_id,
    webhook = CASE WHEN next_attempt < 9223372036854775807 THEN 1 ELSE 0 END;
-- Earlier versions added a row every round: all but each VM's newest count as resolved.
UPDATE alerts SET resolved_time = time
    WHERE id NOT IN (SELECT MAX(id) FROM alerts GROUP BY vm);
CREATE UNIQUE INDEX alerts_active ON alerts(vm, cause) WHERE resolved_time IS NULL;
