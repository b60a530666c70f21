package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/internal/testenv"
	"github.com/mcpauth/mcpauth/repository"
)

// logBuffer collects JSON log lines written from the server's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the records logged so far, decoded.
func (b *logBuffer) lines(tb testing.TB) []map[string]any {
	tb.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			tb.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// withMsg returns the records whose message is msg.
func withMsg(recs []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

func newJSONLog() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

type keyAuth map[string]*caller.Identity

func (a keyAuth) Authenticate(key string) (*caller.Identity, bool) {
	id, ok := a[key]
	return id, ok
}

// credentialReader answers GetProvider by reading the provider's credential
// from the repository, as a use case does before it can answer.
type credentialReader struct {
	mcpauthv1.UnimplementedMCPProviderServiceServer
	store *repository.Store
}

func (c *credentialReader) GetProvider(ctx context.Context, req *mcpauthv1.GetProviderRequest) (*mcpauthv1.GetProviderResponse, error) {
	if _, err := c.store.GetCredential(ctx, domain.TenantGrant("acme", "p1")); err != nil {
		return nil, err
	}
	return &mcpauthv1.GetProviderResponse{Provider: &mcpauthv1.Provider{Name: req.GetName()}}, nil
}

// serveBufconn runs the real gRPC server (NewGRPCServer, with its
// interceptors) on an in-memory listener and returns a client connection.
func serveBufconn(tb testing.TB, log *slog.Logger, svc Services, auth Authenticator) *grpc.ClientConn {
	tb.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := NewGRPCServer(GRPCDeps{Log: log, Auth: auth, Services: svc, Health: health.NewServer()})
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("grpc.NewClient: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// An internal database error's cause appears in the log line, and only
// there: the client gets a bare "internal error". The error is a real one,
// produced by the repository on a database that was never migrated.
func TestInternalDatabaseErrorCauseIsLoggedNotSent(t *testing.T) {
	t.Parallel()
	rootCause := map[string]string{
		"sqlite":   "no such table: credentials",
		"postgres": `relation "credentials" does not exist`,
	}
	testenv.Backends(t, func(t *testing.T, dsn string) {
		ctx := t.Context()
		store, err := repository.Open(ctx, dsn, repository.Options{})
		if err != nil {
			t.Fatalf("repository.Open: %v", err)
		}
		t.Cleanup(func() { _ = store.Close() })
		// The backend's name is the subtest's last path element.
		backend := t.Name()[strings.LastIndexByte(t.Name(), '/')+1:]
		cause := rootCause[backend]

		log, logs := newJSONLog()
		conn := serveBufconn(t, log, Services{
			Providers:  &credentialReader{store: store},
			OAuth:      mcpauthv1.UnimplementedOAuthServiceServer{},
			Audit:      mcpauthv1.UnimplementedAuditServiceServer{},
			Tools:      mcpauthv1.UnimplementedMCPToolServiceServer{},
			Webhooks:   mcpauthv1.UnimplementedWebhookServiceServer{},
			TokenReads: mcpauthv1.UnimplementedTokenReadServiceServer{},
		}, keyAuth{"k": caller.NewIdentity("ops", []string{"acme"}, []caller.Permission{caller.ProvidersRead})})

		const requestID = "req-internal-db-error"
		callCtx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer k", "x-request-id", requestID)
		_, err = mcpauthv1.NewMCPProviderServiceClient(conn).GetProvider(callCtx, &mcpauthv1.GetProviderRequest{Name: "tenants/acme/providers/p1"})

		st := status.Convert(err)
		if st.Code() != codes.Internal || st.Message() != "internal error" || len(st.Details()) != 0 {
			t.Fatalf("client got %v %q with %d details, want INTERNAL \"internal error\" and none", st.Code(), st.Message(), len(st.Details()))
		}
		if sent := fmt.Sprint(st.Proto()); strings.Contains(sent, "credentials") || strings.Contains(sent, "get credential") {
			t.Errorf("the client's status carries internal detail: %s", sent)
		}

		recs := withMsg(logs.lines(t), "internal error")
		if len(recs) != 1 {
			t.Fatalf("got %d \"internal error\" log lines, want 1: %v", len(recs), logs.lines(t))
		}
		rec := recs[0]
		logged, _ := rec["err"].(string)
		if !strings.HasPrefix(logged, "get credential: ") || !strings.Contains(logged, cause) {
			t.Errorf("logged err = %q, want \"get credential: …%s…\"", logged, cause)
		}
		for k, want := range map[string]string{"level": "ERROR", "kind": "INTERNAL", "reason": "INTERNAL", "request_id": requestID} {
			if rec[k] != want {
				t.Errorf("log attribute %s = %v, want %q", k, rec[k], want)
			}
		}
	})
}

func TestToStatusLogsTheCause(t *testing.T) {
	t.Parallel()
	cause := errors.New("dial tcp 10.0.0.7:5432: connect: connection refused")
	tests := []struct {
		name   string
		err    error
		msg    string // the log line's message; "" for none
		level  string
		kind   string
		reason string
		logged string // the err attribute
	}{
		{"internal", apperr.Internal(cause, "get credential"), "internal error", "ERROR", "INTERNAL", "INTERNAL",
			"get credential: " + cause.Error()},
		{"wrapped internal keeps the outer context", fmt.Errorf("refresh: %w", apperr.Internal(cause, "get credential")), "internal error", "ERROR", "INTERNAL", "INTERNAL",
			"refresh: get credential: " + cause.Error()},
		{"unclassified", cause, "internal error", "ERROR", "INTERNAL", "", cause.Error()},
		{"unavailable", apperr.Unavailable(cause, "get credential: database unreachable"), "dependency unavailable", "WARN", "UNAVAILABLE", "UNAVAILABLE",
			"get credential: database unreachable: " + cause.Error()},
		{"other kind with a cause", &apperr.Error{Kind: apperr.KindDeadlineExceeded, Reason: "DEADLINE_EXCEEDED", Message: "get credential: deadline exceeded", Err: context.DeadlineExceeded},
			"call failed", "WARN", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "get credential: deadline exceeded: context deadline exceeded"},
		{"no cause, no log", apperr.NotFound("provider"), "", "", "", "", ""},
		{"caller's own deadline, no log", context.DeadlineExceeded, "", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			log, logs := newJSONLog()
			st := status.Convert(toStatus(context.Background(), log, tt.err))
			if strings.Contains(st.Message(), "connection refused") {
				t.Errorf("status message %q shows the cause", st.Message())
			}
			recs := logs.lines(t)
			if tt.msg == "" {
				if len(recs) != 0 {
					t.Fatalf("logged %v, want nothing", recs)
				}
				return
			}
			if len(recs) != 1 {
				t.Fatalf("got %d log lines, want 1: %v", len(recs), recs)
			}
			rec := recs[0]
			want := map[string]any{"msg": tt.msg, "level": tt.level, "kind": tt.kind, "err": tt.logged}
			if tt.reason != "" {
				want["reason"] = tt.reason
			}
			for k, v := range want {
				if rec[k] != v {
					t.Errorf("log attribute %s = %v, want %v", k, rec[k], v)
				}
			}
			if _, ok := rec["reason"]; !ok && tt.reason != "" || ok && tt.reason == "" {
				t.Errorf("reason attribute %v, want %q", rec["reason"], tt.reason)
			}
		})
	}
}

func TestToStatusUnknownKindIsInternal(t *testing.T) {
	t.Parallel()
	log, _ := newJSONLog()
	st := status.Convert(toStatus(context.Background(), log, &apperr.Error{Kind: apperr.Kind(99), Message: "odd"}))
	if st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Fatalf("got %v %q, want INTERNAL \"internal error\"", st.Code(), st.Message())
	}
}

// TestToStatusCallerGone: a call that failed because its caller cancelled
// or ran out of time answers CANCELED or DEADLINE_EXCEEDED, however a layer
// classified the failure (an outside load test saw cancelled
// StartAuthorization calls counted and logged as INTERNAL). A cancellation
// logs nothing above debug; a deadline is still logged as classified (an
// internal step with its own timeout fails the same way). The same error
// while the caller still waits keeps its classification.
func TestToStatusCallerGone(t *testing.T) {
	t.Parallel()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want codes.Code
		logs int
	}{
		{"store write cut short by the caller's cancel", canceled,
			apperr.Internal(fmt.Errorf("statestore: put: %w", context.Canceled), "flow state store"), codes.Canceled, 0},
		{"caller's deadline inside an unavailable: its code, still logged", expired,
			apperr.Unavailable(fmt.Errorf("read: %w", context.DeadlineExceeded), "database unreachable"), codes.DeadlineExceeded, 1},
		{"deadline of an internal step: its code, still an error in the log", expired,
			apperr.Internal(fmt.Errorf("store tokens: %w", context.DeadlineExceeded), "tokens obtained but not stored"), codes.DeadlineExceeded, 1},
		{"caller's own deadline, unclassified: no log", expired, fmt.Errorf("read: %w", context.DeadlineExceeded), codes.DeadlineExceeded, 0},
		{"caller still waiting: still internal", context.Background(),
			apperr.Internal(fmt.Errorf("statestore: put: %w", context.Canceled), "flow state store"), codes.Internal, 1},
		{"cancelled caller, unrelated failure: still internal", canceled,
			apperr.Internal(errors.New("disk full"), "flow state store"), codes.Internal, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			log, logs := newJSONLog()
			st := status.Convert(toStatus(tt.ctx, log, tt.err))
			if st.Code() != tt.want {
				t.Errorf("code %v (%q), want %v", st.Code(), st.Message(), tt.want)
			}
			var errorLines int
			for _, rec := range logs.lines(t) {
				if rec["level"] == "ERROR" || rec["level"] == "WARN" {
					errorLines++
				}
			}
			if errorLines != tt.logs {
				t.Errorf("%d warn/error log lines, want %d", errorLines, tt.logs)
			}
		})
	}
}
