package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/berth-registry/berth/blobstore"
	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/proxy"
)

// Code is an error code of the OCI distribution spec. Every code the spec
// defines is declared here once, with the status it is normally sent with.
type Code string

const (
	CodeBlobUnknown         Code = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   Code = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   Code = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       Code = "DIGEST_INVALID"
	CodeManifestBlobUnknown Code = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     Code = "MANIFEST_INVALID"
	CodeManifestUnknown     Code = "MANIFEST_UNKNOWN"
	CodeNameInvalid         Code = "NAME_INVALID"
	CodeNameUnknown         Code = "NAME_UNKNOWN"
	CodeSizeInvalid         Code = "SIZE_INVALID"
	CodeUnauthorized        Code = "UNAUTHORIZED"
	CodeDenied              Code = "DENIED"
	CodeUnsupported         Code = "UNSUPPORTED"
	CodeTooManyRequests     Code = "TOOMANYREQUESTS"

	// Berth's own codes, for conditions the spec has no code for. Clients
	// show the message of an error whose code they do not know.
	CodeUnavailable Code = "UNAVAILABLE"    // a dependency (the metadata database) is unreachable
	CodeStorageFull Code = "STORAGE_FULL"   // the blob store has no space left
	CodeInternal    Code = "INTERNAL_ERROR" // a server fault; the log has the details
)

var codeStatus = map[Code]int{
	CodeBlobUnknown:         http.StatusNotFound,
	CodeBlobUploadInvalid:   http.StatusBadRequest,
	CodeBlobUploadUnknown:   http.StatusNotFound,
	CodeDigestInvalid:       http.StatusBadRequest,
	CodeManifestBlobUnknown: http.StatusBadRequest,
	CodeManifestInvalid:     http.StatusBadRequest,
	CodeManifestUnknown:     http.StatusNotFound,
	CodeNameInvalid:         http.StatusBadRequest,
	CodeNameUnknown:         http.StatusNotFound,
	CodeSizeInvalid:         http.StatusBadRequest,
	CodeUnauthorized:        http.StatusUnauthorized,
	CodeDenied:              http.StatusForbidden,
	CodeUnsupported:         http.StatusMethodNotAllowed,
	CodeTooManyRequests:     http.StatusTooManyRequests,
	CodeUnavailable:         http.StatusServiceUnavailable,
	CodeStorageFull:         http.StatusInsufficientStorage,
	CodeInternal:            http.StatusInternalServerError,
}

// Error is an error the client caused, sent as the spec's JSON body.
type Error struct {
	Code    Code
	Status  int // when zero, the code's usual status
	Message string
	Detail  any
	// Header holds headers the response must carry besides the body (the
	// current Range of an upload on 416, for instance).
	Header http.Header
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

func (e *Error) status() int {
	if e.Status != 0 {
		return e.Status
	}
	return codeStatus[e.Code]
}

// errorf builds an *Error with the code's usual status.
func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// withStatus sets a status other than the code's usual one.
func (e *Error) withStatus(status int) *Error { e.Status = status; return e }

// withDetail attaches the spec's free-form detail field.
func (e *Error) withDetail(detail any) *Error { e.Detail = detail; return e }

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// handlerFunc is an HTTP handler that returns its error instead of writing
// it, so that one place decides how every error reaches the wire.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// domainErrors is the one table from the errors of the packages below the
// API (db, blobstore) to the wire. The message is the error's own text,
// which those packages write for the client ("manifest sha256:… is not in
// repository demo/app"), unless the table gives a fixed one: an outage's
// cause names hosts and users, which only the log may see.
var domainErrors = []struct {
	err        error
	code       Code
	status     int    // 0: the code's usual status
	message    string // fixed message instead of the error's text
	retryAfter string // Retry-After, in seconds
}{
	{err: db.ErrRepositoryUnknown, code: CodeNameUnknown},
	{err: db.ErrManifestUnknown, code: CodeManifestUnknown},
	{err: db.ErrTagUnknown, code: CodeManifestUnknown},
	{err: db.ErrBlobUnknown, code: CodeBlobUnknown},
	{err: db.ErrUploadUnknown, code: CodeBlobUploadUnknown},
	// Handlers answer a lost compare-and-set with the upload's current
	// Range (rangeConflict); this is the fallback without it.
	{err: db.ErrUploadOffset, code: CodeBlobUploadInvalid, status: http.StatusRequestedRangeNotSatisfiable},
	{err: db.ErrInvalidInput, code: CodeUnsupported, status: http.StatusBadRequest},
	{err: db.ErrTooManyUploads, code: CodeTooManyRequests, retryAfter: retryAfterUploads},
	{err: db.ErrUnavailable, code: CodeUnavailable, retryAfter: retryAfterUnavailable,
		message: "the registry's metadata database is unreachable; nothing was changed, retry later"},
	{err: blobstore.ErrStorageFull, code: CodeStorageFull, retryAfter: retryAfterFull,
		message: "the registry's blob storage is full; nothing of this request was stored, retry once space has been freed"},
}

// retryAfterFull is what a client is told to wait when the blob store is
// full: space comes back when an operator or garbage collection frees it,
// not in seconds.
const retryAfterFull = "60"

// retryAfterUnavailable is what a client is told to wait when the database
// is unreachable: long enough not to hammer a database coming back, short
// enough that a blip costs a pull a few seconds.
const retryAfterUnavailable = "5"

// retryAfterUploads is what a client that found a repository's upload
// sessions at their limit is told to wait: sessions end when clients
// finish or cancel them, or after --gc-upload-timeout.
const retryAfterUploads = "30"

// toWire turns any error a handler returns into what the client gets.
// Anything not known here is a server fault: logged with the request id,
// answered 500 without internals.
func (h *Handler) toWire(r *http.Request, err error) *Error {
	var oe *Error
	if errors.As(err, &oe) {
		return oe
	}
	var ae *authError
	if errors.As(err, &ae) {
		return ae.wire()
	}
	for _, d := range domainErrors {
		if !errors.Is(err, d.err) {
			continue
		}
		e := &Error{Code: d.code, Status: d.status, Message: d.message}
		if e.Message == "" {
			e.Message = err.Error()
		}
		if d.retryAfter != "" {
			e.Header = http.Header{"Retry-After": {d.retryAfter}}
		}
		return e
	}
	var (
		upstream *proxy.UpstreamError
		pe       *db.PreconditionError
		missing  *db.MissingReferenceError
		mismatch *db.SizeMismatchError
		refd     *db.ReferencedError
		rule     *db.TagRuleError
		quota    *db.QuotaExceededError
		slow     *slowBodyError
	)
	switch {
	case errors.As(err, &upstream):
		return upstreamError(upstream)
	case errors.As(err, &slow):
		e := errorf(CodeBlobUploadInvalid, "%v", slow).withStatus(http.StatusRequestTimeout)
		e.Header = http.Header{"Connection": {"close"}}
		return e
	case errors.As(err, &pe):
		var current any // JSON null when the tag does not exist
		if pe.Current != "" {
			current = pe.Current
		}
		return errorf(CodeDenied, "%v", pe).withStatus(http.StatusPreconditionFailed).
			withDetail(map[string]any{"tag": pe.Tag, "current": current})
	case errors.As(err, &missing):
		return errorf(CodeManifestBlobUnknown, "%v", missing).withDetail(map[string]string{"digest": missing.Digest})
	case errors.As(err, &mismatch):
		return errorf(CodeManifestInvalid, "%v", mismatch)
	case errors.As(err, &rule):
		detail := map[string]any{"tag": rule.Tag, "rule": rule.Rule.ID, "kind": rule.Rule.Kind}
		if rule.Manifest != "" {
			detail["manifest"] = rule.Manifest
		}
		return errorf(CodeDenied, "%v", rule).withDetail(detail)
	case errors.As(err, &quota):
		// 403 DENIED, as a client takes any refusal it cannot retry; the
		// detail carries the numbers in bytes.
		return errorf(CodeDenied, "%v", quota).withDetail(map[string]any{
			"quota": quota.Prefix, "limit": quota.Limit, "usage": quota.Usage, "push": quota.Push})
	case errors.As(err, &refd):
		return errorf(CodeDenied, "%v", refd).withStatus(http.StatusConflict).
			withDetail(map[string]string{"referrer": refd.ReferrerOf})
	}
	h.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", clip(r.URL.Path), "err", err)
	return internalError()
}

// upstreamError is the answer when a pull-through cache's upstream did not
// give what was asked (see package proxy): the upstream's 404 as the
// spec's "unknown" code of what was asked for, its 429 as TOOMANYREQUESTS
// with its Retry-After, anything else as UNAVAILABLE with 502 (504 after
// a timeout); the message names the upstream and its answer.
func upstreamError(ue *proxy.UpstreamError) *Error {
	switch {
	case ue.Status == http.StatusNotFound:
		code := CodeManifestUnknown
		switch ue.Kind {
		case "blob":
			code = CodeBlobUnknown
		case "tags", "repository":
			code = CodeNameUnknown
		}
		return errorf(code, "%v", ue).withStatus(http.StatusNotFound)
	case ue.Status == http.StatusTooManyRequests:
		e := errorf(CodeTooManyRequests, "%v", ue)
		if ue.RetryAfter != "" {
			e.Header = http.Header{"Retry-After": {ue.RetryAfter}}
		}
		return e
	case ue.Timeout:
		return errorf(CodeUnavailable, "%v", ue).withStatus(http.StatusGatewayTimeout)
	}
	return errorf(CodeUnavailable, "%v", ue).withStatus(http.StatusBadGateway)
}

func internalError() *Error {
	return errorf(CodeInternal, "internal server error; the request id in the X-Request-Id header identifies it in the server log")
}

// serve adapts a handlerFunc: its error goes to the wire through toWire.
// A client that went away gets nothing (it would not read it); the request
// is counted as 499, the status proxies use for it.
func (h *Handler) serve(fn handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		err := fn(w, r)
		if err == nil {
			return
		}
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			clientGone(r.Context())
			h.log.DebugContext(r.Context(), "client went away", "err", err)
			return
		}
		writeError(w, r, h.toWire(r, err))
	}
}

// maxMessage bounds an error message on the wire, whatever built it: the
// values a message echoes are clipped where they are formatted, and this
// is the backstop.
const maxMessage = 2048

func writeError(w http.ResponseWriter, r *http.Request, e *Error) {
	for k, v := range e.Header {
		w.Header()[k] = v
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.Code, Message: clipTo(e.Message, maxMessage), Detail: e.Detail}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(e.status())
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}
