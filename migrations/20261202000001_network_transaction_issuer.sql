-- Which processor (profile name) issued a token's network transaction id.
--
-- A network transaction id means something only to the processor that issued it (NMI's is its
-- own transaction id), so a merchant-initiated charge cites it only to that processor. When the
-- token is charged through another processor, that one's id replaces it. NULL for ids stored
-- before this column existed, which are cited as they were before.
ALTER TABLE vault_entries
    ADD COLUMN network_transaction_issuer text,
    ADD CONSTRAINT vault_entries_network_transaction_issuer_check
        CHECK (network_transaction_issuer IS NULL
               OR (network_transaction_id IS NOT NULL
                   AND length(network_transaction_issuer) BETWEEN 1 AND 100));
