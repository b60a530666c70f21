package testauthz

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// maxRecordedBody bounds how much of a request body is kept for assertions.
const maxRecordedBody = 64 << 10

// RecordedRequest is what a test server received: enough to assert that a
// client sent (or did not send) a parameter or header.
type RecordedRequest struct {
	// Time is when the request arrived.
	Time time.Time
	// Method is the HTTP method.
	Method string
	// Host is the Host header the client sent.
	Host string
	// Path is the URL path, without query.
	Path string
	// Query holds the URL query parameters.
	Query url.Values
	// Form holds the parameters of an application/x-www-form-urlencoded
	// body; it is empty for other bodies.
	Form url.Values
	// Header is a copy of the request headers, including Authorization.
	Header http.Header
	// Body is the first 64 KiB of the request body.
	Body []byte
}

// Param returns the named parameter from the form body, else the query.
func (r RecordedRequest) Param(name string) string {
	if r.Form.Has(name) {
		return r.Form.Get(name)
	}
	return r.Query.Get(name)
}

// recorder keeps the requests a server received.
type recorder struct {
	mu   sync.Mutex
	reqs []RecordedRequest
}

// record copies r (restoring its body for the real handler) and keeps the copy.
func (rec *recorder) record(r *http.Request) RecordedRequest {
	rr := RecordedRequest{
		Time:   time.Now(),
		Method: r.Method,
		Host:   r.Host,
		Path:   r.URL.Path,
		Query:  r.URL.Query(),
		Form:   url.Values{},
		Header: r.Header.Clone(),
	}
	if r.Body != nil {
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxRecordedBody+1))
		rest := r.Body
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), rest), rest}
		if len(body) > maxRecordedBody {
			body = body[:maxRecordedBody]
		}
		rr.Body = body
		if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/x-www-form-urlencoded" {
			if f, err := url.ParseQuery(string(body)); err == nil {
				rr.Form = f
			}
		}
	}
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, rr)
	rec.mu.Unlock()
	return rr
}

func (rec *recorder) all() []RecordedRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]RecordedRequest(nil), rec.reqs...)
}

func (rec *recorder) count(path string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.reqs {
		if r.Path == path {
			n++
		}
	}
	return n
}
