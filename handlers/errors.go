package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/berth-registry/berth/db"
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

// serve adapts a handlerFunc. Client errors become the OCI JSON body with
// their status; anything else is a server fault: logged with the request id
// and answered 500 without internals. A client that went away is only
// logged at debug level.
func (h *Handler) serve(fn handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		err := fn(w, r)
		if err == nil {
			return
		}
		var oe *Error
		switch {
		case errors.As(err, &oe):
		case db.IsInvalidInput(err):
			oe = errorf(CodeUnsupported, "the request holds characters that cannot be stored (a NUL byte or invalid UTF-8)").
				withStatus(http.StatusBadRequest)
		case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
			h.log.DebugContext(r.Context(), "client went away", "err", err)
			return
		default:
			h.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			oe = &Error{Code: "INTERNAL_ERROR", Status: http.StatusInternalServerError,
				Message: "internal server error; the request id in the X-Request-Id header identifies it in the server log"}
		}
		writeError(w, r, oe)
	}
}

func writeError(w http.ResponseWriter, r *http.Request, e *Error) {
	for k, v := range e.Header {
		w.Header()[k] = v
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message, Detail: e.Detail}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(e.status())
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}
