package egress

import (
	"errors"
	"io"
)

// ErrBodyTooLarge is returned when a response body is longer than the cap.
var ErrBodyTooLarge = errors.New("egress: response body too large")

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
