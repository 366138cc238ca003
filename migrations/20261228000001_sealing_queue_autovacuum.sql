-- The sealing queue (audit_unsealed) is a queue: every audit event is inserted into it and
-- deleted once sealed, so it holds a handful of live rows and, after a bulk load drained in one
-- go (`payvault import` of a million cards, then `payvault audit seal`), millions of dead ones.
-- Until vacuum removes them, every sealing pass (five a second per instance) starts its dequeue
-- at the front of the queue's index and walks over all of them, and the sealer's pending count
-- reads them too: measured on 3,000,000 dead rows, 1.6 s for the first dequeue and about 160 ms
-- for each after it, against 3 ms once vacuumed. That is most of a core, and it showed as p99
-- spikes of 100-200 ms on every API request after a scale load (docs/benchmarks.md, session 8).
-- Autovacuum's default trigger scales with the table's live rows, and a queue table is not what
-- its cost-based delay is tuned for: vacuum this one after every 10,000 dead rows, unthrottled
-- (the table is small once vacuumed, so each run is short).
ALTER TABLE audit_unsealed SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
