-- Usage and quotas: how many bytes each repository and each quota's
-- namespace uses, kept exact by the transactions that make manifests live
-- or not live (see db/usage.go), and the quotas enforced at manifest
-- commit. A registry upgraded in place gets its usage computed here, from
-- the manifests, manifest_blobs and blobs it already has.
BEGIN;

-- How many live manifests of the repository reference the blob. A row
-- exists only while refs > 0: the blob's bytes count in the repository's
-- usage exactly while it has a row.
CREATE TABLE repository_blob_refs (
    repository_id bigint NOT NULL REFERENCES repositories (id),
    digest        text COLLATE "C" NOT NULL,
    refs          integer NOT NULL,
    PRIMARY KEY (repository_id, digest)
);

-- One row per repository that ever had a live manifest: the bytes of its
-- distinct referenced blobs, the bytes of its live manifests, and how many
-- of those there are.
CREATE TABLE repository_usage (
    repository_id  bigint PRIMARY KEY REFERENCES repositories (id),
    blob_bytes     bigint NOT NULL DEFAULT 0,
    manifest_bytes bigint NOT NULL DEFAULT 0,
    manifests      bigint NOT NULL DEFAULT 0
);

-- A quota covers the repository named prefix and every repository below
-- it (prefix/…), not prefix-something. Its usage columns are kept like
-- repository_usage's, over the whole namespace: quota_blob_refs counts,
-- per blob, the repositories of the namespace that reference it, so a blob
-- shared by several of them counts once. warned_at is set when usage
-- crosses warn_percent of the limit and cleared when it falls back below.
CREATE TABLE quotas (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix         text COLLATE "C" NOT NULL UNIQUE,
    limit_bytes    bigint NOT NULL CHECK (limit_bytes >= 0),
    warn_percent   integer NOT NULL DEFAULT 0 CHECK (warn_percent BETWEEN 0 AND 100),
    blob_bytes     bigint NOT NULL DEFAULT 0,
    manifest_bytes bigint NOT NULL DEFAULT 0,
    manifests      bigint NOT NULL DEFAULT 0,
    warned_at      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE quota_blob_refs (
    quota_id bigint NOT NULL REFERENCES quotas (id) ON DELETE CASCADE,
    digest   text COLLATE "C" NOT NULL,
    refs     integer NOT NULL,
    PRIMARY KEY (quota_id, digest)
);

-- The backfill. No Berth of this version runs before this commits (berth
-- serve migrates before it serves); the share lock keeps older replicas'
-- pushes and deletes out while it counts, and the README's upgrade note
-- says to stop them (what they change afterwards is not counted).
LOCK TABLE manifests, manifest_blobs IN SHARE MODE;

INSERT INTO repository_blob_refs (repository_id, digest, refs)
SELECT m.repository_id, mb.digest, count(*)
FROM manifests m JOIN manifest_blobs mb ON mb.manifest_id = m.id
WHERE m.deleted_at IS NULL
GROUP BY m.repository_id, mb.digest;

INSERT INTO repository_usage (repository_id, blob_bytes, manifest_bytes, manifests)
SELECT r.id,
       coalesce((SELECT sum(b.size) FROM repository_blob_refs rb JOIN blobs b ON b.digest = rb.digest
                 WHERE rb.repository_id = r.id), 0),
       coalesce(sum(m.size), 0), count(m.id)
FROM repositories r LEFT JOIN manifests m ON m.repository_id = r.id AND m.deleted_at IS NULL
GROUP BY r.id;

COMMIT;
