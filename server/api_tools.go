package server

import (
	"context"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/tools"
)

// ToolUseCases lists and calls tools. *tools.Service implements it.
type ToolUseCases interface {
	Refresh(ctx context.Context, tenant, id, user string) (*tools.List, error)
	Stored(ctx context.Context, tenant, id, user string) (*tools.List, error)
	Call(ctx context.Context, in tools.CallInput) (*tools.Result, error)
}

var _ ToolUseCases = (*tools.Service)(nil)

// toolAPI implements mcpauth.v1.MCPToolService.
type toolAPI struct {
	mcpauthv1.UnimplementedMCPToolServiceServer
	uc ToolUseCases
}

// NewToolAPI returns the gRPC tool service.
func NewToolAPI(uc ToolUseCases) mcpauthv1.MCPToolServiceServer { return &toolAPI{uc: uc} }

func (a *toolAPI) RefreshTools(ctx context.Context, req *mcpauthv1.RefreshToolsRequest) (*mcpauthv1.RefreshToolsResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	l, err := a.uc.Refresh(ctx, tenant, id, req.GetUser())
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	return &mcpauthv1.RefreshToolsResponse{Tools: toolsProto(l.Tools), FetchTime: timestamppb.New(l.FetchedAt)}, nil
}

func (a *toolAPI) ListTools(ctx context.Context, req *mcpauthv1.ListToolsRequest) (*mcpauthv1.ListToolsResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	l, err := a.uc.Stored(ctx, tenant, id, req.GetUser())
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	if l.FetchedAt.IsZero() {
		return &mcpauthv1.ListToolsResponse{}, nil
	}
	return &mcpauthv1.ListToolsResponse{Tools: toolsProto(l.Tools), FetchTime: timestamppb.New(l.FetchedAt)}, nil
}

func (a *toolAPI) CallTool(ctx context.Context, req *mcpauthv1.CallToolRequest) (*mcpauthv1.CallToolResponse, error) {
	tenant, id, err := resname.ParseProvider("name", req.GetName())
	if err != nil {
		return nil, err
	}
	res, err := a.uc.Call(ctx, tools.CallInput{Tenant: tenant, Provider: id, Tool: req.GetTool(),
		Arguments: req.GetArguments().AsMap(), User: req.GetUser()})
	if err != nil {
		return nil, withProvider(err, tenant, id)
	}
	out := &mcpauthv1.CallToolResponse{IsError: res.IsError, StructuredContent: structOf(res.StructuredContent)}
	for _, c := range res.Content {
		if st := structOf(c); st != nil {
			out.Content = append(out.Content, st)
		}
	}
	return out, nil
}

func toolsProto(list []tools.Tool) []*mcpauthv1.Tool {
	out := make([]*mcpauthv1.Tool, 0, len(list))
	for _, t := range list {
		out = append(out, &mcpauthv1.Tool{Name: t.Name, Title: t.Title, Description: t.Description,
			InputSchema: structOf(t.InputSchema), OutputSchema: structOf(t.OutputSchema), Annotations: structOf(t.Annotations)})
	}
	return out
}

// structOf converts a JSON object; nil (or one protobuf cannot hold) stays
// absent.
func structOf(m map[string]any) *structpb.Struct {
	if m == nil {
		return nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil
	}
	return s
}
