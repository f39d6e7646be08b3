-- The audit trail: one row per state change, written by the transaction that
-- makes the change, so the log and the state can never disagree.
--
-- Tag history is the tag.* rows of this table: the history of tag T of
-- repository R is every row with repository = R and tag = T, newest first.
-- Rows name the repository and digests as text rather than by row id, so the
-- trail outlives the rows it describes.
BEGIN;

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text NOT NULL,
    request_id text NOT NULL DEFAULT '',
    -- blob.upload, blob.mount, blob.unlink, upload.start, upload.cancel,
    -- manifest.push, manifest.delete, tag.create, tag.move, tag.restore,
    -- tag.untag, tag.delete (removed with its manifest)
    action     text NOT NULL,
    repository text COLLATE "C" NOT NULL,
    tag        text COLLATE "C",
    digest     text COLLATE "C",   -- what the action is about; for a tag change, the new target
    old_digest text COLLATE "C",   -- for a tag change, the previous target
    detail     jsonb
);

CREATE INDEX audit_log_tag ON audit_log (repository, tag, id) WHERE tag IS NOT NULL;
CREATE INDEX audit_log_repository ON audit_log (repository, at);
CREATE INDEX audit_log_digest ON audit_log (digest, id);
CREATE INDEX audit_log_at ON audit_log (at);

COMMIT;
