// Package auth is Berth's authentication and authorization policy, kept
// apart from the database and HTTP so that every rule can be table-tested:
// it has no state of its own and does no I/O except reading the files it
// is given. The db package stores users, groups, grants, API tokens and
// signing keys; the handlers ask this package what they mean.
//
// Names: users and groups have names of [A-Za-z0-9][A-Za-z0-9._@-]{0,127};
// "anonymous" and "authenticated" are reserved.
//
// Scopes are those of the Docker token protocol, "repository:NAME:ACTIONS"
// (ACTIONS a comma list of pull, push and delete) and "registry:catalog:*".
// A name may contain ':' (host:port), so a scope is split at its first and
// last ':'. Unknown types and actions parse but are never granted.
//
// Repository globs use '*' for any run of characters within one path
// component and "**" for any run across components ("team-a/**").
//
// Secrets: passwords are hashed with bcrypt, the scheme of htpasswd files,
// which Berth imports. API tokens ("berth_<id>_<secret>", the prefix so that
// secret scanners recognise them) carry 256 random bits, so their secrets are
// stored as a plain SHA-256: a slow hash protects guessable secrets, and
// these are not.
package auth
