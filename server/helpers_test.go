package server

import (
	"google.golang.org/grpc"
	"google.golang.org/protobuf/reflect/protoreflect"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

func methodNames(ms []grpc.MethodDesc) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.MethodName
	}
	return out
}

// apiMethod is one RPC of the API and its full gRPC method name.
type apiMethod struct {
	Full string
	Desc protoreflect.MethodDescriptor
}

// apiMethods lists every RPC of the API's services from their descriptors,
// so a new RPC is covered by the tests that walk them.
func apiMethods() []apiMethod {
	var out []apiMethod
	for _, fd := range []protoreflect.FileDescriptor{
		mcpauthv1.File_mcpauth_v1_provider_proto, mcpauthv1.File_mcpauth_v1_oauth_proto,
		mcpauthv1.File_mcpauth_v1_audit_proto, mcpauthv1.File_mcpauth_v1_tool_proto, mcpauthv1.File_mcpauth_v1_webhook_proto,
		mcpauthv1.File_mcpauth_v1_token_read_proto, mcpauthv1.File_mcpauth_v1_connection_proto,
	} {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				out = append(out, apiMethod{Full: "/" + string(svc.FullName()) + "/" + string(m.Name()), Desc: m})
			}
		}
	}
	return out
}
