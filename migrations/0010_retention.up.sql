-- Retention policies: which tags and untagged manifests `berth retention
-- run` (and the scheduled runs of every replica) removes. See
-- db/retention.go.
BEGIN;

-- One row per policy. repos are the globs as given, repos_re the same as
-- anchored regular expressions (auth.GlobRegex), what the removal query
-- matches repository names against. A NULL rule is a rule not given. The
-- tag rules apply only when at least one of them is given: a policy with
-- none of them removes no tag.
CREATE TABLE retention_policies (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  text COLLATE "C" NOT NULL UNIQUE,
    repos                 text[] NOT NULL,
    repos_re              text[] NOT NULL,
    keep_last             integer CHECK (keep_last > 0),
    keep_pulled_within    interval,
    keep_pushed_within    interval,
    keep_tags             text[],
    delete_untagged_after interval,
    -- how often every replica's scheduler runs it; NULL: only by hand
    schedule              interval CHECK (schedule > interval '0'),
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- the last run, by hand or scheduled, and what it removed; totals
    -- since the policy was created, for the metrics
    last_run_at           timestamptz,
    last_run_tags         bigint NOT NULL DEFAULT 0,
    last_run_manifests    bigint NOT NULL DEFAULT 0,
    tags_removed          bigint NOT NULL DEFAULT 0,
    manifests_removed     bigint NOT NULL DEFAULT 0
);

-- When did a manifest lose its last tag? The latest audit row in which a
-- tag left it (tag.move, tag.untag, tag.delete name it in old_digest).
-- Without this index that question scans the repository's whole trail.
CREATE INDEX audit_log_old_digest ON audit_log (repository, old_digest, id) WHERE old_digest IS NOT NULL;

COMMIT;
