-- vmattest server schema v3 (SQLite): webhook secrets are stored sealed (ChaCha20-Poly1305
-- under STATE_DIR/secrets.key, docs/API.md). The server seals any plaintext left in
-- webhook_secret at start and clears that column.
ALTER TABLE vms ADD COLUMN webhook_secret_sealed BLOB;
