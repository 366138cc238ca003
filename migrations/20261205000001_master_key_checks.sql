-- One check value per master key version: HMAC-SHA256 of a fixed label under a key derived
-- (HKDF) from that version, so it reveals nothing about the key. Recorded when a version is first
-- loaded, it lets every instance and CLI command refuse a wrong PAYVAULT_MASTER_KEY at start,
-- naming the version, instead of failing every decryption and sealing the audit log under the
-- wrong key. On the first start after this migration, a version that already protects data is
-- recorded only after that data proved the key right (see src/app/keys.rs).
CREATE TABLE master_key_checks (
    version     integer     NOT NULL,
    check_mac   bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT master_key_checks_pkey PRIMARY KEY (version),
    CONSTRAINT master_key_checks_mac_length CHECK (length(check_mac) = 32)
);
