package egress

import (
	"errors"
	"io"
	"net/url"
	"strings"
)

// ErrBodyTooLarge is returned when a response body is longer than the cap.
var ErrBodyTooLarge = errors.New("egress: response body too large")

// ReadAll reads r to the end, returning ErrBodyTooLarge (and no data) as
// soon as more than max bytes arrive. Callers use it for a cap smaller than
// Config.MaxBodyBytes, for example on metadata documents.
func ReadAll(r io.Reader, max int64) ([]byte, error) {
	if max < 0 {
		max = 0
	}
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, ErrBodyTooLarge
	}
	return b, nil
}

// limitedBody passes through up to max bytes of a response body and then
// fails with ErrBodyTooLarge instead of returning more.
type limitedBody struct {
	rc        io.ReadCloser
	remaining int64
	tooLarge  bool
}

func newLimitedBody(rc io.ReadCloser, max, contentLength int64) io.ReadCloser {
	// A declared length over the cap fails on the first read, before any
	// of the body is transferred.
	return &limitedBody{rc: rc, remaining: max, tooLarge: contentLength > max}
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.tooLarge {
		return 0, ErrBodyTooLarge
	}
	// Read at most one byte past the cap, enough to tell "exactly max" from
	// "more than max".
	if int64(len(p)) > b.remaining+1 {
		p = p[:b.remaining+1]
	}
	n, err := b.rc.Read(p)
	if int64(n) > b.remaining {
		n = int(b.remaining)
		b.remaining = 0
		b.tooLarge = true
		return n, ErrBodyTooLarge
	}
	b.remaining -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// Redact returns err with any *url.Error replaced by one that names only the
// scheme and host of the request URL, so that the error can be logged or
// returned without the path, query or userinfo (http.Client puts the whole
// URL into its errors). errors.Is and errors.As still see the cause.
func Redact(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	where := "request"
	if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
		where = strings.ToLower(u.Scheme) + "://" + u.Host
	}
	return &redactedError{msg: ue.Op + " " + where + ": " + causeText(ue.Err), err: ue.Err}
}

func causeText(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
