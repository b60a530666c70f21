// Package server is mcpauth's transport: the gRPC server and its
// interceptors (request id, recovery, logging, authentication, tenant and
// permission checks, error mapping), the REST gateway, the browser routes of
// the OAuth flow and the HTTP hardening around them.
package server

import (
	"context"
	"crypto/x509"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/reqid"
)

// MaxMessageBytes caps every gRPC request message.
const MaxMessageBytes = 1 << 20

// Authenticator finds the caller holding an API key.
type Authenticator interface {
	Authenticate(key string) (*caller.Identity, bool)
}

// CertAuthenticator finds the caller a verified client certificate
// belongs to (mTLS callers); an Authenticator may also be one.
type CertAuthenticator interface {
	AuthenticateCert(cert *x509.Certificate) (*caller.Identity, bool)
}

// DenialRecorder records refused calls in the audit log.
type DenialRecorder interface {
	RecordDenied(ctx context.Context, tenant, method, reason string)
	// RecordUserDenied records a caller limited to named users that asked
	// to act for another user.
	RecordUserDenied(ctx context.Context, tenant, provider, method, user string)
}

// Services are the API implementations registered on the gRPC server.
type Services struct {
	Providers  mcpauthv1.MCPProviderServiceServer
	OAuth      mcpauthv1.OAuthServiceServer
	Audit      mcpauthv1.AuditServiceServer
	Tools      mcpauthv1.MCPToolServiceServer
	Webhooks   mcpauthv1.WebhookServiceServer
	TokenReads mcpauthv1.TokenReadServiceServer
	// Connections is optional: nil answers UNIMPLEMENTED (tests that do
	// not exercise it).
	Connections mcpauthv1.ConnectionServiceServer
}

// GRPCDeps are what NewGRPCServer needs.
type GRPCDeps struct {
	Log      *slog.Logger
	Auth     Authenticator
	Denials  DenialRecorder
	Services Services
	Health   *health.Server
	Options  []grpc.ServerOption
	// RPCMetrics, when set, counts every call by service, method and final
	// code and times it (the outermost interceptor, so it sees the code the
	// caller gets).
	RPCMetrics *grpcprom.ServerMetrics
}

// StreamWorkers is how many goroutines serve calls and are kept between
// them. Without them every call runs on a new goroutine whose stack starts
// small and is copied as it grows to the depth of a handler (a JSON decode,
// a Redis round trip): about 8% of the server's CPU on StartAuthorization
// under load. A call that finds every worker busy gets a new goroutine, as
// without workers; the kept stacks cost a few MiB at most.
const StreamWorkers = 128

// NewGRPCServer builds the gRPC server with every service, health and
// reflection registered.
func NewGRPCServer(d GRPCDeps) *grpc.Server {
	i := &interceptor{log: d.Log, auth: d.Auth, denials: d.Denials, codec: newRequestCodec()}
	unary := []grpc.UnaryServerInterceptor{i.unary}
	stream := []grpc.StreamServerInterceptor{i.stream}
	if d.RPCMetrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{d.RPCMetrics.UnaryServerInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{d.RPCMetrics.StreamServerInterceptor()}, stream...)
	}
	opts := append([]grpc.ServerOption{
		grpc.NumStreamWorkers(StreamWorkers),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.ForceServerCodecV2(i.codec),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}, d.Options...)
	s := grpc.NewServer(opts...)
	mcpauthv1.RegisterMCPProviderServiceServer(s, d.Services.Providers)
	mcpauthv1.RegisterOAuthServiceServer(s, d.Services.OAuth)
	mcpauthv1.RegisterAuditServiceServer(s, d.Services.Audit)
	mcpauthv1.RegisterMCPToolServiceServer(s, d.Services.Tools)
	mcpauthv1.RegisterTokenReadServiceServer(s, d.Services.TokenReads)
	if d.Services.Webhooks != nil {
		mcpauthv1.RegisterWebhookServiceServer(s, d.Services.Webhooks)
	}
	conns := d.Services.Connections
	if conns == nil {
		conns = mcpauthv1.UnimplementedConnectionServiceServer{}
	}
	mcpauthv1.RegisterConnectionServiceServer(s, conns)
	healthpb.RegisterHealthServer(s, d.Health)
	reflection.Register(s)
	if d.RPCMetrics != nil {
		d.RPCMetrics.InitializeMetrics(s)
	}
	return s
}

type interceptor struct {
	log     *slog.Logger
	auth    Authenticator
	denials DenialRecorder
	codec   *requestCodec
}

// openMethod reports whether a method needs no API key.
func openMethod(full string) bool {
	return strings.HasPrefix(full, "/grpc.health.v1.Health/") || strings.HasPrefix(full, "/grpc.reflection.")
}

// unary runs, in order: request id, recovery, authentication, tenant and
// permission check, the handler, error mapping, and one access log line.
func (i *interceptor) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	ctx, id := withRequestID(ctx)
	defer func() {
		if r := recover(); r != nil {
			i.log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		i.logCall(ctx, info.FullMethod, start, err)
	}()
	if err := i.codec.check(req); err != nil {
		return nil, toStatus(ctx, i.log, err)
	}
	if openMethod(info.FullMethod) {
		return handler(ctx, req)
	}
	ctx, err = i.check(ctx, info.FullMethod, req)
	if err != nil {
		return nil, toStatus(ctx, i.log, err)
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", id))
	resp, err = handler(ctx, req)
	return resp, toStatus(ctx, i.log, err)
}

// stream serves reflection and the server-streaming API methods
// (WatchEvents). A server-streaming method's one request is checked as a
// unary request is (key, tenant, permission) when the handler receives it,
// before the handler sees it; the handler's context then carries the caller
// and the request id. Client-streaming methods are refused: none exist.
func (i *interceptor) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	if openMethod(info.FullMethod) {
		return handler(srv, &checkedStream{ServerStream: ss, codec: i.codec, log: i.log})
	}
	if info.IsClientStream {
		return status.Error(codes.PermissionDenied, "streaming methods are not open to callers")
	}
	start := time.Now()
	ctx, id := withRequestID(ss.Context())
	as := &authorizedStream{checkedStream: checkedStream{ServerStream: ss, codec: i.codec, log: i.log}, ctx: ctx, i: i, method: info.FullMethod}
	defer func() {
		if r := recover(); r != nil {
			i.log.ErrorContext(as.ctx, "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
			err = status.Error(codes.Internal, "internal error")
		}
		i.logCall(as.ctx, info.FullMethod, start, err)
	}()
	_ = ss.SetHeader(metadata.Pairs("x-request-id", id))
	err = handler(srv, as)
	if as.refused != nil {
		return as.refused
	}
	return toStatus(as.ctx, i.log, err)
}

// authorizedStream checks the request of a server-streaming call when the
// handler receives it.
type authorizedStream struct {
	checkedStream
	ctx     context.Context
	i       *interceptor
	method  string
	checked bool
	refused error
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

func (s *authorizedStream) RecvMsg(m any) error {
	if s.checked {
		return status.Error(codes.InvalidArgument, "one request message only")
	}
	if err := s.checkedStream.RecvMsg(m); err != nil {
		return err
	}
	s.checked = true
	ctx, err := s.i.check(s.ctx, s.method, m)
	s.ctx = ctx
	if err != nil {
		s.refused = toStatus(ctx, s.i.log, err)
		return s.refused
	}
	return nil
}

// checkedStream refuses a received message that did not decode.
type checkedStream struct {
	grpc.ServerStream
	codec *requestCodec
	log   *slog.Logger
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := s.codec.check(m); err != nil {
		return toStatus(s.Context(), s.log, err)
	}
	return nil
}

// check authenticates the caller and checks tenant and permission.
func (i *interceptor) check(ctx context.Context, method string, req any) (context.Context, error) {
	id, err := i.authenticate(ctx)
	if err != nil {
		return ctx, err
	}
	ctx = caller.WithIdentity(ctx, id)
	tenant, _, err := authorize(ctx, id, method, req)
	if err != nil {
		if apperr.KindOf(err) == apperr.KindPermissionDenied && i.denials != nil && tenant != "" {
			i.recordDenial(ctx, tenant, method, req, err)
		}
		return ctx, err
	}
	return ctx, nil
}

// authenticate finds the caller: by the API key when the call carries one,
// else by the client certificate the TLS handshake verified (mTLS callers
// of the callers file).
func (i *interceptor) authenticate(ctx context.Context) (*caller.Identity, error) {
	if key := bearerFromMetadata(ctx); key != "" {
		id, ok := i.auth.Authenticate(key)
		if !ok {
			return nil, apperr.Unauthenticated("invalid API key")
		}
		return id, nil
	}
	cert := verifiedClientCert(ctx)
	if cert == nil {
		return nil, apperr.Unauthenticated("missing API key: send authorization: Bearer <key>")
	}
	if ca, ok := i.auth.(CertAuthenticator); ok {
		if id, ok := ca.AuthenticateCert(cert); ok {
			return id, nil
		}
	}
	return nil, apperr.Unauthenticated("the client certificate belongs to no caller: add its URI SAN (cert_uri) or subject (cert_subject) to the callers file, or send an API key")
}

// verifiedClientCert returns the leaf of the client certificate chain the
// TLS handshake verified, or nil (no TLS, no certificate, or not verified).
func verifiedClientCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

func bearerFromMetadata(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
	}
	return ""
}

func withRequestID(ctx context.Context) (context.Context, string) {
	md, _ := metadata.FromIncomingContext(ctx)
	id := ""
	if v := md.Get("x-request-id"); len(v) > 0 && reqid.Valid(v[0]) {
		id = v[0]
	} else {
		id = reqid.New()
	}
	return reqid.With(ctx, id), id
}

func (i *interceptor) logCall(ctx context.Context, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelInfo
	if code == codes.Internal || code == codes.Unknown {
		level = slog.LevelError
	}
	if !i.log.Enabled(ctx, level) {
		return // no attributes built for a line nobody writes
	}
	i.log.Log(ctx, level, "grpc call",
		"method", method,
		"code", code.String(),
		"duration_ms", float64(time.Since(start).Microseconds())/1000,
		"request_id", reqid.From(ctx),
		"caller", caller.ActorName(ctx),
	)
}
