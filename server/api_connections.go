package server

import (
	"context"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/connections"
	"github.com/mcpauth/mcpauth/validate"
)

// ConnectionUseCases shows and deletes connections. *connections.Service
// implements it.
type ConnectionUseCases interface {
	Get(ctx context.Context, tenant, provider, id string) (*connections.Connection, error)
	List(ctx context.Context, tenant, provider, user string, after repository.ConnectionKey, limit int) (*connections.Page, error)
	Delete(ctx context.Context, tenant, provider, id string) (bool, error)
}

var _ ConnectionUseCases = (*connections.Service)(nil)

// connectionAPI implements mcpauth.v1.ConnectionService.
type connectionAPI struct {
	mcpauthv1.UnimplementedConnectionServiceServer
	uc ConnectionUseCases
}

// NewConnectionAPI returns the gRPC connection service.
func NewConnectionAPI(uc ConnectionUseCases) mcpauthv1.ConnectionServiceServer {
	return &connectionAPI{uc: uc}
}

func (a *connectionAPI) GetConnection(ctx context.Context, req *mcpauthv1.GetConnectionRequest) (*mcpauthv1.GetConnectionResponse, error) {
	tenant, provider, id, err := resname.ParseConnection("name", req.GetName())
	if err != nil {
		return nil, err
	}
	c, err := a.uc.Get(ctx, tenant, provider, id)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.GetConnectionResponse{Connection: connectionProto(c)}, nil
}

// ListConnections pages by (provider id, connection id): the page token
// holds the last pair shown, bound to the parent and the user filter.
func (a *connectionAPI) ListConnections(ctx context.Context, req *mcpauthv1.ListConnectionsRequest) (*mcpauthv1.ListConnectionsResponse, error) {
	tenant, provider, err := resname.ParseProviderOrAll("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	user := req.GetUser()
	if user != "" {
		if err := validate.UserID("user", user); err != nil {
			return nil, err
		}
	}
	// The user is hashed into the binding: a token never carries a user id.
	bound := req.GetParent()
	if user != "" {
		bound += "|" + domain.ConnectionID(user)
	}
	tok, err := resname.DecodePageToken("page_token", bound, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	var after repository.ConnectionKey
	if tok.After != "" {
		p, c, ok := strings.Cut(tok.After, "/")
		if !ok {
			return nil, apperr.Invalid("page_token", "is not a valid page token")
		}
		after = repository.ConnectionKey{Provider: p, ConnectionID: c}
	}
	page, err := a.uc.List(ctx, tenant, provider, user, after, size)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListConnectionsResponse{Connections: make([]*mcpauthv1.Connection, 0, len(page.Connections))}
	for _, c := range page.Connections {
		resp.Connections = append(resp.Connections, connectionProto(c))
	}
	if page.More && len(page.Connections) > 0 {
		last := page.Connections[len(page.Connections)-1]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: bound, After: last.Provider + "/" + last.ID})
	}
	return resp, nil
}

func (a *connectionAPI) DeleteConnection(ctx context.Context, req *mcpauthv1.DeleteConnectionRequest) (*mcpauthv1.DeleteConnectionResponse, error) {
	tenant, provider, id, err := resname.ParseConnection("name", req.GetName())
	if err != nil {
		return nil, err
	}
	revoked, err := a.uc.Delete(ctx, tenant, provider, id)
	if err != nil {
		return nil, err
	}
	return &mcpauthv1.DeleteConnectionResponse{RevokedAtServer: revoked}, nil
}

// connectionProto is the API form of a connection.
func connectionProto(c *connections.Connection) *mcpauthv1.Connection {
	p := &mcpauthv1.Connection{Name: resname.ConnectionName(c.Tenant, c.Provider, c.ID), User: c.User, Status: authStatuses[c.Status],
		Reason: c.Reason, Issuer: c.Issuer, Scopes: c.Scopes, HasRefreshToken: c.HasRefresh, Creator: c.Creator,
		CreateTime: timestamppb.New(c.CreateTime), UpdateTime: timestamppb.New(c.UpdateTime)}
	if !c.ExpiresAt.IsZero() {
		p.ExpireTime = timestamppb.New(c.ExpiresAt)
	}
	if !c.LastRefresh.IsZero() {
		p.LastRefreshTime = timestamppb.New(c.LastRefresh)
	}
	if c.IdentitySubject != "" {
		p.Identity = &mcpauthv1.ConnectionIdentity{Issuer: c.IdentityIssuer, Subject: c.IdentitySubject}
	}
	return p
}
