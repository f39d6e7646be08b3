-- Events: every state change writes its event in its own transaction (a
-- transactional outbox), and a delivery row for every webhook that wants
-- it. See db/events.go.
BEGIN;

-- One row per repository that has had an event: the last sequence number
-- given out. A transaction takes the next numbers with an UPDATE at its
-- very end and holds the row lock until it commits, so the numbers of one
-- repository commit in order and without gaps (a rollback returns them).
-- Rows are never deleted, so numbers are never reused.
CREATE TABLE event_streams (
    repository text COLLATE "C" PRIMARY KEY,
    last_seq   bigint NOT NULL CHECK (last_seq > 0)
);

-- The events. body holds the envelope's target, request, actor and source
-- (and previousDigest); id, seq, timestamp and action are columns.
CREATE TABLE events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid       text NOT NULL,
    repository text COLLATE "C" NOT NULL,
    seq        bigint NOT NULL,
    at         timestamptz NOT NULL,
    action     text NOT NULL,
    body       jsonb NOT NULL,
    UNIQUE (repository, seq)
);
CREATE INDEX events_at ON events (at);

-- Webhook endpoints. secret is the HMAC key: it signs every request, so it
-- is kept as given (unlike passwords and API tokens, which are hashed).
-- repos are the globs as given; repos_re the same as anchored regular
-- expressions, what the outbox matches repositories against in SQL.
CREATE TABLE webhooks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    url        text NOT NULL,
    secret     text,
    repos      text[],
    repos_re   text[],
    actions    text[],
    headers    jsonb,
    timeout_ms integer NOT NULL CHECK (timeout_ms > 0),
    pulls      boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (webhook, event). No foreign keys: a webhook deleted while an
-- event is written must not fail the push that writes it (its rows are
-- never claimed, and the cleanup removes them); the event row is written
-- in the same statement as its deliveries and kept while any refers to it.
--
-- A pending row is claimable when it is the lowest seq of its lane
-- (webhook, repository) still pending and next_at has passed; a claim
-- moves next_at forward by the lease, so an expired claim is claimable
-- again.
CREATE TABLE webhook_deliveries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id  bigint NOT NULL,
    event_id    bigint NOT NULL,
    repository  text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts    integer NOT NULL DEFAULT 0,
    next_at     timestamptz NOT NULL,
    claimed_by  text,
    last_status integer,
    last_error  text,
    created_at  timestamptz NOT NULL,
    done_at     timestamptz
);
CREATE INDEX webhook_deliveries_lane ON webhook_deliveries (webhook_id, repository, seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (done_at) WHERE state <> 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (webhook_id) WHERE state = 'dead';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

COMMIT;
