// Package auth is Berth's authentication and authorization policy: who may
// do what, how secrets are kept, and which tokens are trusted. It is kept
// apart from the database and HTTP so that every rule can be table-tested
// on its own: it has no package-level state (a Throttle keeps its failure
// counts and a Verifier its keys, nothing else is remembered), and its only
// I/O is reading the files a VerifierConfig names. The db package stores users, groups, grants, API
// tokens and signing keys; the handlers and the CLI ask this package what
// they mean.
//
// # Subjects and grants
//
// A grant gives a subject actions (pull, push, delete) on the repositories
// its glob matches. A subject is a user name, "group:<name>",
// "anonymous" (everyone, signed in or not) or "authenticated" (every
// signed-in user). In a glob '*' matches within one path component and
// "**" across them ("team-a/**").
//
// For a repository, each subject's matching grants are narrowed to those
// with the longest glob (ties unite), so a subject's specific grant
// overrides its general one; then the subjects a principal acts as unite,
// so no group's or "authenticated"'s grant takes away what a user was
// given. Admins may do everything, the catalog included (Allowed).
//
// # Tokens
//
// Clients follow the Docker token protocol: they ask for scopes
// ("repository:NAME:ACTIONS", "registry:catalog:*"; a name may contain
// host:port) and get a JWT. A request for more than the caller may have is
// down-scoped, not refused (Authorize); the registry then checks each
// request against the token's access claim (Covers).
//
// Three kinds of credential are in play:
//   - Passwords, hashed with bcrypt: people choose them, so they need a slow,
//     salted hash, and bcrypt is what htpasswd files (the reference
//     registry's user store, which Berth imports) hold.
//   - API tokens ("berth_<id>_<secret>", the prefix so that secret scanners
//     recognise a leaked one) with optional scopes of their own; a token
//     never grants more than its owner has now. Their secrets are 256 random
//     bits, stored as a plain SHA-256: a slow hash protects guessable
//     secrets, and these are not guessable.
//   - JWTs: Berth's own, signed ES256 with a key it creates on first start
//     (small, fast to make, verified by every client library) and publishes
//     as a JWKS; and, optionally, those of an external token server
//     (GitLab, Harbor, docker_auth), trusted through a JWKS file or a root
//     certificate bundle as the reference registry does.
//
// Failed logins are slowed per user and per address (Throttle), and an
// unknown user costs the same as a known one (DummyPasswordCheck), so that
// neither time nor delay tells which users exist.
package auth
