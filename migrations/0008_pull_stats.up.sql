-- Pull statistics: how often and when a manifest, and a tag, was last
-- pulled. Each replica counts pulls in memory and adds them here in one
-- transaction per flush (--pull-stats-flush).
--
-- Tables of their own rather than columns of manifests and tags: a flush
-- then writes no row that a push or delete locks, and an update of a
-- counter does not copy a manifest row (payload and all). The flush holds
-- FOR KEY SHARE on the manifests and tags it counts (taken with SKIP
-- LOCKED: it never waits for them), so that a row here always belongs to a
-- row there; a purged manifest or a removed tag takes its statistics with
-- it (ON DELETE CASCADE). A tag moved to another manifest keeps its row:
-- the tag's statistics count the pulls of the tag, whatever it pointed at.
BEGIN;

CREATE TABLE manifest_pulls (
    manifest_id    bigint PRIMARY KEY REFERENCES manifests (id) ON DELETE CASCADE,
    pull_count     bigint NOT NULL CHECK (pull_count > 0),
    last_pulled_at timestamptz NOT NULL
);

CREATE TABLE tag_pulls (
    repository_id  bigint NOT NULL,
    name           text COLLATE "C" NOT NULL,
    pull_count     bigint NOT NULL CHECK (pull_count > 0),
    last_pulled_at timestamptz NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, name) REFERENCES tags (repository_id, name) ON DELETE CASCADE
);

COMMIT;
