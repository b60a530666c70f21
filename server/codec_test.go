package server

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/caller"
)

// rawCodec sends pre-encoded bytes as they are, so a test can put on the
// wire what no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// badInvalidUTF8 is a message whose string field num holds invalid UTF-8.
func badInvalidUTF8(num protowire.Number) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, []byte("ok\xff\xfeSECRET"))
}

// TestUndecodableRequestIsInvalidArgument: over a real gRPC connection, a
// request of any RPC whose string field holds invalid UTF-8, or whose wire
// data is malformed, answers INVALID_ARGUMENT (reason INVALID_ARGUMENT, no
// byte of the request quoted), with or without an API key, where grpc-go
// answers INTERNAL; streams (reflection) and open methods (health) too.
// A well-formed raw request still decodes and reaches the handler.
func TestUndecodableRequestIsInvalidArgument(t *testing.T) {
	t.Parallel()
	log, _ := newJSONLog()
	conn := serveBufconn(t, log, Services{
		Providers:  mcpauthv1.UnimplementedMCPProviderServiceServer{},
		OAuth:      mcpauthv1.UnimplementedOAuthServiceServer{},
		Audit:      mcpauthv1.UnimplementedAuditServiceServer{},
		Tools:      mcpauthv1.UnimplementedMCPToolServiceServer{},
		Webhooks:   mcpauthv1.UnimplementedWebhookServiceServer{},
		TokenReads: mcpauthv1.UnimplementedTokenReadServiceServer{},
	}, keyAuth{"k": caller.NewIdentity("ops", []string{"acme"}, []caller.Permission{caller.ProvidersRead})})
	want := func(t *testing.T, what string, err error) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Errorf("%s: %v %q, want INVALID_ARGUMENT", what, st.Code(), st.Message())
			return
		}
		if strings.Contains(st.Message(), "SECRET") || strings.Contains(st.Message(), "\ufffd") {
			t.Errorf("%s: the status quotes the request: %q", what, st.Message())
		}
		reason := ""
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				reason = info.GetReason()
			}
		}
		if reason != "INVALID_ARGUMENT" {
			t.Errorf("%s: ErrorInfo reason %q, want INVALID_ARGUMENT", what, reason)
		}
	}
	malformed := []byte{0x0a, 0x05, 'a'} // a length running past the end
	rpcs := 0
	for _, am := range apiMethods() {
		rpcs++
		bodies := map[string][]byte{"malformed": malformed}
		fields := am.Desc.Input().Fields()
		for k := range fields.Len() {
			if f := fields.Get(k); f.Kind() == protoreflect.StringKind && !f.IsList() && !f.IsMap() {
				bodies["invalid UTF-8 in "+string(f.Name())] = badInvalidUTF8(f.Number())
				break
			}
		}
		for what, body := range bodies {
			for _, key := range []string{"", "k"} {
				ctx := t.Context()
				if key != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
				}
				var out []byte
				err := conn.Invoke(ctx, am.Full, &body, &out, grpc.ForceCodec(rawCodec{}))
				want(t, am.Full+" "+what+" key "+key, err)
			}
		}
	}
	if rpcs < 14 {
		t.Fatalf("covered %d RPCs, want them all", rpcs)
	}

	body := badInvalidUTF8(1)
	var out []byte
	want(t, "health check", conn.Invoke(t.Context(), "/grpc.health.v1.Health/Check", &body, &out, grpc.ForceCodec(rawCodec{})))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&body); err != nil {
		t.Fatal(err)
	}
	want(t, "reflection stream", stream.RecvMsg(&out))

	good := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("tenants/acme/providers/p1"))
	ctx = metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer k")
	if err := conn.Invoke(ctx, "/mcpauth.v1.MCPProviderService/GetProvider", &good, &out, grpc.ForceCodec(rawCodec{})); status.Code(err) != codes.Unimplemented {
		t.Errorf("a well-formed raw request: %v, want the handler's UNIMPLEMENTED", err)
	}
}
