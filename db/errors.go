package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
)

// Errors returned by this package. Callers compare with errors.Is; the
// error values returned wrap them with a sentence that names what was not
// found (see notFound), written for the client that asked.
var (
	ErrRepositoryUnknown = errors.New("repository not known")
	ErrManifestUnknown   = errors.New("manifest not known")
	ErrBlobUnknown       = errors.New("blob not known")
	ErrUploadUnknown     = errors.New("upload session not known")
	ErrTagUnknown        = errors.New("tag not known")
	ErrUserUnknown       = errors.New("user not known")
	ErrGroupUnknown      = errors.New("group not known")
	ErrGrantUnknown      = errors.New("grant not known")
	ErrTokenUnknown      = errors.New("API token not known")
	// ErrUserExists means a user of that name already exists.
	ErrUserExists = errors.New("user already exists")
	// ErrUploadOffset means an upload chunk did not start where the session
	// stands, typically because another request appended first.
	ErrUploadOffset = errors.New("upload chunk does not start at the session's current offset")
	// ErrTooManyUploads means a repository has as many open upload
	// sessions as it may (see UploadCreate).
	ErrTooManyUploads = errors.New("too many open upload sessions")
	// ErrInvalidInput means PostgreSQL refused a value as text (a NUL
	// byte, an invalid encoding): the client's input, not a server fault.
	// The API validates input before it gets here; this is the backstop
	// that keeps such input from ever answering 500.
	ErrInvalidInput = errors.New("the request holds characters that cannot be stored (a NUL byte or invalid UTF-8)")
	// ErrUnavailable means the metadata database could not be reached, or
	// did not answer within the configured timeout. Nothing was changed
	// that a client was told about: the caller may retry.
	ErrUnavailable = errors.New("the metadata database is unreachable")
)

// describedError is a domain error with a sentence for the client: Error
// is the sentence, errors.Is finds the sentinel.
type describedError struct {
	msg string
	err error
}

func (e *describedError) Error() string { return e.msg }
func (e *describedError) Unwrap() error { return e.err }

// notFound returns sentinel described for the client, e.g.
// notFound(ErrManifestUnknown, "manifest %s is not in repository %s", …).
func notFound(sentinel error, format string, args ...any) error {
	return &describedError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

func manifestUnknown(repo, ref string) error {
	return notFound(ErrManifestUnknown, "manifest %s is not in repository %s", ref, repo)
}

func repositoryUnknown(repo string) error {
	return notFound(ErrRepositoryUnknown, "repository %s is not known", repo)
}

func blobUnknown(repo, dgst string) error {
	return notFound(ErrBlobUnknown, "blob %s is not in repository %s", dgst, repo)
}

func uploadUnknown(repo, id string) error {
	return notFound(ErrUploadUnknown, "upload %s is not known in repository %s (finished, cancelled or expired)", id, repo)
}

func tagUnknown(repo, tag string) error {
	return notFound(ErrTagUnknown, "tag %s is not in repository %s", tag, repo)
}

func userUnknown(name string) error {
	return notFound(ErrUserUnknown, "user %s does not exist", name)
}

func groupUnknown(name string) error {
	return notFound(ErrGroupUnknown, "group %s does not exist; create it with berth group add", name)
}

// MissingReferenceError reports a manifest that references a blob or child
// manifest which is not present in the repository.
type MissingReferenceError struct {
	Digest   string
	Manifest bool // a child manifest rather than a blob
}

func (e *MissingReferenceError) Error() string {
	if e.Manifest {
		return fmt.Sprintf("referenced manifest %s is not present in the repository; push the manifest first", e.Digest)
	}
	return fmt.Sprintf("referenced blob %s is not present in the repository; push the blob first", e.Digest)
}

// SizeMismatchError reports a descriptor whose size differs from the stored
// blob's.
type SizeMismatchError struct {
	Digest         string
	Declared, Real int64
}

func (e *SizeMismatchError) Error() string {
	return fmt.Sprintf("descriptor of %s declares %d bytes but the blob holds %d", e.Digest, e.Declared, e.Real)
}

// ReferencedError reports a manifest that cannot be deleted because a live
// index in the same repository still lists it.
type ReferencedError struct {
	Digest     string // the manifest to delete
	ReferrerOf string // digest of the index that references it
}

func (e *ReferencedError) Error() string {
	return fmt.Sprintf("manifest %s is referenced by index %s; delete the index first", e.Digest, e.ReferrerOf)
}

// unavailableError is ErrUnavailable with its cause, for the log.
type unavailableError struct{ cause error }

func (e *unavailableError) Error() string { return ErrUnavailable.Error() + ": " + e.cause.Error() }

func (e *unavailableError) Is(target error) bool { return target == ErrUnavailable }
func (e *unavailableError) Unwrap() error        { return e.cause }

// invalidInputError is ErrInvalidInput with PostgreSQL's own error.
type invalidInputError struct{ cause error }

func (e *invalidInputError) Error() string        { return ErrInvalidInput.Error() }
func (e *invalidInputError) Is(target error) bool { return target == ErrInvalidInput }
func (e *invalidInputError) Unwrap() error        { return e.cause }

// unreachable reports whether err means the database could not be asked or
// did not answer: no connection, a connection lost, a deadline passed, the
// server shutting down or out of connections. The caller has already
// excluded its own context ending (a client that went away).
func unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code[:2] == "08", // connection_exception
			pgErr.Code == "57P01", // admin_shutdown
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now (starting up, recovering)
			pgErr.Code == "53300", // too_many_connections
			pgErr.Code == "57014": // query_canceled (a statement_timeout set by the operator)
			return true
		}
		return false // the server answered
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, puddle.ErrClosedPool)
}

// invalidInput reports an error PostgreSQL raised because a value cannot be
// stored as text.
func invalidInput(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "22021", // character_not_in_repertoire
		"22P05": // untranslatable_character
		return true
	}
	return false
}

// retryable reports whether err is a transient conflict worth retrying the
// whole transaction for.
func retryable(err error) bool {
	if errors.Is(err, errContended) {
		return true
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40001", // serialization_failure
		"40P01": // deadlock_detected
		return true
	}
	return false
}

// errContended is returned by a statement loop that kept losing to
// concurrent transactions (a row inserted, then deleted, then inserted
// again by others while we look). withTx retries the whole transaction.
var errContended = errors.New("row contended by concurrent transactions")
