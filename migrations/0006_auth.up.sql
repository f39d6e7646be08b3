-- Authentication and authorization (issue 13): users and their groups, the
-- grants that say who may pull, push or delete in which repositories, API
-- tokens, and the keys that sign the registry's bearer tokens.
--
-- Subjects of grants are text, not foreign keys, because a subject is one
-- of several kinds: a user name, 'group:<name>', 'anonymous' (everyone) or
-- 'authenticated' (every user who logged in). Deleting a user or a group
-- deletes its grants in the same transaction (see package db), so a user
-- created later under the same name inherits nothing.
--
-- Names use COLLATE "C" like every other name in the schema: listings sort
-- by bytes, whatever the database's locale.
BEGIN;

CREATE TABLE users (
    name          text COLLATE "C" PRIMARY KEY,
    password_hash text NOT NULL,                 -- bcrypt, as crypt(3) writes it: $2a$, $2b$ or $2y$
    admin         boolean NOT NULL DEFAULT false, -- may do anything, everywhere
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE groups (
    name       text COLLATE "C" PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_members (
    group_name text COLLATE "C" NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    user_name  text COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
);
-- The groups of a user: every authenticated request looks them up.
CREATE INDEX group_members_user ON group_members (user_name, group_name);

-- A grant gives subject the actions on every repository whose name matches
-- repo_glob (the syntax is package auth's; the catalog query matches the
-- glob translated to a regular expression, see RepositoryListVisible). Of the
-- grants of one subject that match a repository, the one with the longest
-- glob wins, so a longer grant with fewer actions (even none) narrows a
-- broader one. The primary key also serves the per-request lookup by
-- subject.
CREATE TABLE grants (
    subject    text COLLATE "C" NOT NULL,
    repo_glob  text COLLATE "C" NOT NULL,
    actions    text[] NOT NULL CHECK (actions <@ ARRAY['pull', 'push', 'delete']::text[]),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, repo_glob)
);

-- An API token is berth_<id>_<secret>: id is public and finds the row,
-- only a hash of the secret is stored. scopes ('repository:GLOB:ACTIONS')
-- narrow what the token may do below its user's rights; none means all of
-- them. A revoked or expired token stays listed until its user is deleted.
-- last_used_at is written in batches, a few seconds late (see TokenTouch).
CREATE TABLE api_tokens (
    id           text COLLATE "C" PRIMARY KEY,
    user_name    text COLLATE "C" NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL DEFAULT '{}',
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_name);

-- Keys that sign the bearer tokens the registry issues; every replica
-- signs with the newest and accepts all of them. id is the key id (kid).
CREATE TABLE signing_keys (
    id          text COLLATE "C" PRIMARY KEY,
    private_key bytea NOT NULL,                  -- PKCS#8, DER
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Which API token made a change (the actor column names its user).
ALTER TABLE audit_log ADD COLUMN token_id text COLLATE "C";

-- The principal that opened an upload session, so that the API can refuse
-- the session to anyone else. NULL when none was recorded (sessions opened
-- before authentication existed).
ALTER TABLE uploads ADD COLUMN owner text;

COMMIT;
