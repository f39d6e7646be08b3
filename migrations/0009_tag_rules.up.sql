-- Tag rules: immutable and protected tags. See db/tagrules.go.
BEGIN;

-- repos is the repository glob as given; repos_re the same as an anchored
-- regular expression, which the rules of a repository are selected by in
-- SQL. tags is a Go regular expression, matched in Go (PostgreSQL's
-- dialect differs), anywhere in the tag name unless anchored.
CREATE TABLE tag_rules (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repos      text NOT NULL,
    repos_re   text NOT NULL,
    tags       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('immutable', 'protected')),
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMIT;
