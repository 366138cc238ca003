-- Stored credentials (merchant-initiated charges on a token).
--
-- The card network's transaction id of the first approved charge of a vaulted card: later
-- merchant-initiated charges of the token cite it. Set once, never changed. It is not card data,
-- but it is kept out of logs and audit details all the same.
ALTER TABLE vault_entries
    ADD COLUMN network_transaction_id text,
    ADD CONSTRAINT vault_entries_network_transaction_id_check
        CHECK (network_transaction_id IS NULL OR length(network_transaction_id) BETWEEN 1 AND 255);
