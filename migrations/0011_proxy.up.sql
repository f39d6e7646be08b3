-- Pull-through cache (issue 17): the proxies, the cluster-wide single
-- flight of upstream fetches, when each cached tag was last checked with
-- its upstream, and what a cached manifest references that is not cached
-- (yet). See db/proxy.go and package proxy.
BEGIN;

-- A repository whose name is prefix, or starts with prefix + '/', is a
-- pull-through cache of upstream (the empty prefix matches every name no
-- other prefix matches: a mirror). The password is sealed with AES-GCM
-- (package proxy); which key sealed it is in the sealed bytes.
CREATE TABLE proxies (
    prefix        text COLLATE "C" PRIMARY KEY,
    upstream      text NOT NULL,
    remote_prefix text NOT NULL DEFAULT '',
    username      text NOT NULL DEFAULT '',
    password      bytea,
    ttl           interval NOT NULL CHECK (ttl >= interval '0'),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The key that seals upstream passwords when --proxy-secret-key is not
-- set: created once, by the first `berth proxy add` that needs it.
CREATE TABLE proxy_keys (
    id         int PRIMARY KEY CHECK (id = 1),
    key        bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per upstream fetch in flight, cluster-wide: the replica that
-- inserted it (claimant) fetches; the others wait. A claim whose lease has
-- expired is taken over. A fetch that failed leaves its error for a short
-- while (claimant ''), so that the requests that waited for it, and those
-- that come right after, share its answer instead of each asking a
-- failing upstream again.
CREATE TABLE proxy_claims (
    key         text COLLATE "C" PRIMARY KEY,
    claimant    text NOT NULL,
    lease_until timestamptz NOT NULL,
    error       text NOT NULL DEFAULT '',
    status      int NOT NULL DEFAULT 0
);

-- When a cached tag (or a subject's referrers, tag 'referrers:<digest>')
-- was last found current upstream: re-checked with a HEAD once older than
-- the proxy's ttl.
CREATE TABLE proxy_checks (
    repository text COLLATE "C" NOT NULL,
    tag        text COLLATE "C" NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository, tag)
);

-- What a manifest of a pull-through cache references that was not cached
-- when it was stored: blobs (config, layers) and, for a sparse index,
-- child manifests. When the blob or child is fetched, the row becomes a
-- manifest_blobs or manifest_children row (ProxyResolve).
CREATE TABLE manifest_absent_refs (
    manifest_id bigint NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    digest      text COLLATE "C" NOT NULL,
    is_manifest boolean NOT NULL,
    size        bigint NOT NULL,
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_absent_refs_digest ON manifest_absent_refs (digest);

COMMIT;
