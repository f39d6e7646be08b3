-- Online garbage collection.
BEGIN;

-- Candidates for collection, queued by the transactions that make them
-- candidates. kind 'blob': key is a digest (uploaded, unlinked, or freed by
-- a purged manifest). kind 'manifest': key is a manifest id (deleted, so
-- its tombstone expires; or left untagged). review_after is when the
-- candidate may first be examined: a later event only ever moves it later.
-- seq counts the events, so that a worker finishing with a candidate can
-- tell whether something happened to it meanwhile. leased_until marks a
-- candidate a worker has claimed; a crashed worker's lease simply expires.
CREATE TABLE gc_queue (
    kind         text NOT NULL CHECK (kind IN ('blob', 'manifest')),
    key          text COLLATE "C" NOT NULL,
    review_after timestamptz NOT NULL,
    seq          bigint NOT NULL DEFAULT 1,
    leased_until timestamptz,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);
CREATE INDEX gc_queue_due ON gc_queue (review_after);

-- 'missing': the row's bytes were found gone (berth check --repair). The
-- blob is invisible like a 'deleting' one, and the next upload of the same
-- digest re-publishes the bytes and makes it 'ready' again.
ALTER TABLE blobs DROP CONSTRAINT blobs_state_check;
ALTER TABLE blobs ADD CONSTRAINT blobs_state_check CHECK (state IN ('ready', 'deleting', 'missing'));
CREATE INDEX blobs_not_ready ON blobs (state) WHERE state <> 'ready';

-- Purging a tombstoned manifest removes the rows that list it as a child.
-- Only tombstoned indexes can still list it: a live index blocks the delete.
ALTER TABLE manifest_children DROP CONSTRAINT manifest_children_child_id_fkey;
ALTER TABLE manifest_children ADD CONSTRAINT manifest_children_child_id_fkey
    FOREIGN KEY (child_id) REFERENCES manifests (id) ON DELETE CASCADE;

COMMIT;
