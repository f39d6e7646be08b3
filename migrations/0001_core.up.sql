-- Core registry metadata: repositories, blobs and their links, manifests and
-- what they reference, tags, upload sessions.
--
-- Names, tags and digests use COLLATE "C" so that ORDER BY and the `last`
-- pagination of the API compare bytes, exactly as clients sort them.
BEGIN;

CREATE TABLE repositories (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Blobs are global and content addressed: one row per digest, whatever the
-- number of repositories that hold it. state = 'deleting' means garbage
-- collection has claimed the blob and may be removing its bytes: readers
-- treat it as absent, and an upload of the same digest re-publishes the bytes
-- under the row lock before setting it back to 'ready'.
CREATE TABLE blobs (
    digest     text COLLATE "C" PRIMARY KEY,
    size       bigint NOT NULL CHECK (size >= 0),
    state      text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'deleting')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A blob is visible in a repository only through a link: uploads and mounts
-- create it, blob DELETE removes it.
CREATE TABLE repository_blobs (
    repository_id bigint NOT NULL REFERENCES repositories (id),
    digest        text COLLATE "C" NOT NULL REFERENCES blobs (digest),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

-- Manifests belong to a repository. payload is the exact bytes as pushed;
-- digest is computed over them. deleted_at is a tombstone: the row stays so
-- that a delete can be audited and undone, and so that GC can purge it later.
CREATE TABLE manifests (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repository_id  bigint NOT NULL REFERENCES repositories (id),
    digest         text COLLATE "C" NOT NULL,
    media_type     text NOT NULL,
    -- artifactType, or for image manifests without one the config media type:
    -- what the referrers API reports and filters on.
    artifact_type  text,
    config_digest  text COLLATE "C",
    subject_digest text COLLATE "C",
    annotations    jsonb,
    size           bigint NOT NULL,
    payload        bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    deleted_by     text,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject_digest)
    WHERE subject_digest IS NOT NULL AND deleted_at IS NULL;

-- What a manifest references: its config and layer blobs...
CREATE TABLE manifest_blobs (
    manifest_id bigint NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    digest      text COLLATE "C" NOT NULL REFERENCES blobs (digest),
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_blobs_digest ON manifest_blobs (digest);

-- ...and, for an index or manifest list, its child manifests in the same
-- repository.
CREATE TABLE manifest_children (
    parent_id bigint NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    child_id  bigint NOT NULL REFERENCES manifests (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX manifest_children_child ON manifest_children (child_id);

CREATE TABLE tags (
    repository_id bigint NOT NULL REFERENCES repositories (id),
    name          text COLLATE "C" NOT NULL,
    manifest_id   bigint NOT NULL REFERENCES manifests (id),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_manifest ON tags (manifest_id);

-- Upload sessions. Everything needed to continue an upload lives here, so any
-- replica can take the next request: the byte count received so far, the
-- running sha256 state (encoding.BinaryMarshaler form) and the blob store's
-- own state (which part files or multipart parts hold the bytes).
CREATE TABLE uploads (
    id            text PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repositories (id),
    size          bigint NOT NULL DEFAULT 0,
    hash_state    bytea NOT NULL,
    store_state   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_updated ON uploads (updated_at);

COMMIT;
