package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mcpauth/mcpauth/domain"
)

// strictJSON is the gateway's JSON marshaler: protojson with proto field
// names, whose decoder takes exactly one JSON value from a body. The
// runtime's own decoder stops after the first value, so
// `{"display_name":"x"} garbage` or two objects in a row were accepted as
// the first one.
type strictJSON struct {
	*runtime.JSONPb
}

var _ runtime.Marshaler = strictJSON{}

// errTrailingData is the answer to a body with more after its JSON value;
// it names no byte of the body.
var errTrailingData = errors.New("request body has data after its JSON value")

// NewDecoder returns a decoder that refuses anything but white space after
// the value it decodes.
func (j strictJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return singleValueDecoder{runtime.DecoderWrapper{Decoder: json.NewDecoder(r), UnmarshalOptions: j.UnmarshalOptions}}
}

// Unmarshal is NewDecoder's rule applied to a byte slice.
func (j strictJSON) Unmarshal(data []byte, v any) error {
	return j.NewDecoder(bytes.NewReader(data)).Decode(v)
}

type singleValueDecoder struct {
	runtime.DecoderWrapper
}

func (d singleValueDecoder) Decode(v any) error {
	if err := d.DecoderWrapper.Decode(v); err != nil {
		return err
	}
	switch _, err := d.Token(); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil && isBodyTooLarge(err):
		return err
	default:
		return errTrailingData
	}
}

func isBodyTooLarge(err error) bool {
	var tooLarge *http.MaxBytesError
	return errors.As(err, &tooLarge)
}

// cappedBody is a request body behind http.MaxBytesReader that remembers
// whether the cap was hit: the generated handlers turn every read error
// into INVALID_ARGUMENT (HTTP 400), and gatewayErrorHandler uses this to
// answer 413 instead.
type cappedBody struct {
	io.ReadCloser
	hit bool
}

func (b *cappedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && isBodyTooLarge(err) {
		b.hit = true
	}
	return n, err
}

// verbMismatch reports whether the route r matched has no custom verb while
// r's last path segment carries one: the runtime lets a pattern's "*" match
// "x:callTool", which would send DELETE .../x:callTool to DeleteProvider.
func verbMismatch(r *http.Request) bool {
	pat, ok := runtime.HTTPPattern(r.Context())
	return ok && pat.Verb() == "" && strings.Contains(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:], ":")
}

// exactVerb is a gateway middleware that refuses a request verbMismatch
// finds, as the routing error code.
func exactVerb(refuse func(w http.ResponseWriter, r *http.Request)) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if verbMismatch(r) {
				refuse(w, r)
				return
			}
			next(w, r, params)
		}
	}
}

// errBodyTooLarge is the status of a REST body over maxGatewayBody.
var errBodyTooLarge = &runtime.HTTPStatusError{
	HTTPStatus: http.StatusRequestEntityTooLarge,
	Err:        withInvalidArgumentReason(status.New(codes.InvalidArgument, fmt.Sprintf("request body exceeds %d bytes", maxGatewayBody))),
}

// withInvalidArgumentReason gives an INVALID_ARGUMENT status the gateway
// made itself (an undecodable or oversized body) the ErrorInfo reason the
// use cases' refusals carry, so REST callers branch on the same data.
func withInvalidArgumentReason(st *status.Status) error {
	if st.Code() != codes.InvalidArgument || len(st.Details()) != 0 {
		return st.Err()
	}
	d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: domain.ReasonInvalidArgument, Domain: errorDomain})
	if err != nil {
		return st.Err()
	}
	return d.Err()
}

// capBody is a gateway middleware (it runs once a route matched) that caps
// the request body at maxGatewayBody; a declared length over the cap is
// refused before anything is read.
func capBody(fail func(w http.ResponseWriter, r *http.Request, err error)) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if r.ContentLength > maxGatewayBody {
				fail(w, r, errBodyTooLarge)
				return
			}
			r.Body = &cappedBody{ReadCloser: http.MaxBytesReader(w, r.Body, maxGatewayBody)}
			next(w, r, params)
		}
	}
}

// gatewayErrorHandler is the runtime's error handler, except that a request
// whose body hit the cap answers 413 whatever the generated code made of the
// read error.
func gatewayErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if b, ok := r.Body.(*cappedBody); ok && b.hit {
		err = errBodyTooLarge
	} else if st, ok := status.FromError(err); ok {
		err = withInvalidArgumentReason(st)
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// probedMethods are the methods tried when telling a caller which ones a
// path serves.
var probedMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// routingErrorHandler answers a known path with an unsupported method 405
// with an Allow header (the runtime answers 501 without one), and a path no
// method serves 404. probe is a mux with the same routes whose handlers
// only report that they matched.
func routingErrorHandler(probe http.Handler) runtime.RoutingErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
		if code != http.StatusMethodNotAllowed {
			runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
			return
		}
		var allow []string
		for _, method := range probedMethods {
			pr := r.Clone(ctx)
			pr.Method, pr.Body, pr.ContentLength = method, http.NoBody, 0
			rec := &statusRecorder{header: http.Header{}}
			probe.ServeHTTP(rec, pr)
			if rec.code == http.StatusNoContent {
				allow = append(allow, method)
			}
		}
		if len(allow) == 0 {
			runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, http.StatusNotFound)
			return
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		runtime.HTTPError(ctx, mux, m, w, r, &runtime.HTTPStatusError{
			HTTPStatus: http.StatusMethodNotAllowed,
			Err:        status.Error(codes.Unimplemented, "method not allowed; allowed: "+strings.Join(allow, ", ")),
		})
	}
}

// newProbeMux returns a mux with the routes register adds whose handlers
// answer 204 without calling anything (405 where exactVerb would refuse),
// and whose routing errors are bare status codes.
func newProbeMux(register func(*runtime.ServeMux) error) (*runtime.ServeMux, error) {
	probe := runtime.NewServeMux(
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithMiddlewares(func(runtime.HandlerFunc) runtime.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
				if verbMismatch(r) {
					w.WriteHeader(http.StatusMethodNotAllowed)
					return
				}
				w.WriteHeader(http.StatusNoContent)
			}
		}),
		runtime.WithRoutingErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, code int) {
			w.WriteHeader(code)
		}),
	)
	return probe, register(probe)
}

// statusRecorder keeps only the status a probe answered.
type statusRecorder struct {
	header http.Header
	code   int
}

func (s *statusRecorder) Header() http.Header { return s.header }

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return len(p), nil
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}
