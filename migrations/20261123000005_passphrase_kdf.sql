-- Master keys derived from a passphrase (PAYVAULT_MASTER_PASSPHRASE): the Argon2id salt and
-- cost are not secret and live here, so every instance derives the same key. `check_mac` lets
-- payvault refuse a wrong passphrase at startup instead of failing every decryption later.
CREATE TABLE master_key_kdf (
    version     integer     NOT NULL,
    salt        bytea       NOT NULL,
    m_cost_kib  integer     NOT NULL,
    t_cost      integer     NOT NULL,
    p_cost      integer     NOT NULL,
    check_mac   bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT master_key_kdf_pkey PRIMARY KEY (version),
    CONSTRAINT master_key_kdf_salt_check CHECK (length(salt) >= 16)
);
