-- When the collector last did work that runs once per interval for the
-- whole registry (the sweep of the blob store), so that replicas that
-- restart often still do it, and do it once between them.
BEGIN;
CREATE TABLE gc_state (
    name text PRIMARY KEY,
    at   timestamptz NOT NULL
);
COMMIT;
