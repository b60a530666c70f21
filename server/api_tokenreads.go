package server

import (
	"context"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/resname"
	"github.com/mcpauth/mcpauth/service/readlog"
	"github.com/mcpauth/mcpauth/validate"
)

// TokenReadUseCases lists token-read counts. *readlog.Log implements it.
type TokenReadUseCases interface {
	List(ctx context.Context, tenant, provider string, after readlog.Cursor, limit int) ([]readlog.Reads, error)
}

var _ TokenReadUseCases = (*readlog.Log)(nil)

// tokenReadAPI implements mcpauth.v1.TokenReadService.
type tokenReadAPI struct {
	mcpauthv1.UnimplementedTokenReadServiceServer
	uc TokenReadUseCases
}

// NewTokenReadAPI returns the gRPC token-read service.
func NewTokenReadAPI(uc TokenReadUseCases) mcpauthv1.TokenReadServiceServer {
	return &tokenReadAPI{uc: uc}
}

// ListTokenReads pages through a tenant's token-read counts, newest minute
// first. The page token is bound to the parent and the provider filter and
// holds the previous page's last (minute, provider, caller): values of the
// caller's own tenant only.
func (a *tokenReadAPI) ListTokenReads(ctx context.Context, req *mcpauthv1.ListTokenReadsRequest) (*mcpauthv1.ListTokenReadsResponse, error) {
	tenant, err := resname.ParseTenant("parent", req.GetParent())
	if err != nil {
		return nil, err
	}
	size, err := validate.PageSize("page_size", req.GetPageSize())
	if err != nil {
		return nil, err
	}
	bound := req.GetParent() + "|" + req.GetProvider()
	tok, err := resname.DecodePageToken("page_token", bound, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	after, err := decodeReadsCursor(tok.After)
	if err != nil {
		return nil, err
	}
	provider := ""
	if req.GetProvider() != "" {
		t, p, err := resname.ParseProvider("provider", req.GetProvider())
		if err != nil {
			return nil, err
		}
		if t != tenant {
			return &mcpauthv1.ListTokenReadsResponse{}, nil
		}
		provider = p
	}
	rows, err := a.uc.List(ctx, tenant, provider, after, size+1)
	if err != nil {
		return nil, err
	}
	resp := &mcpauthv1.ListTokenReadsResponse{}
	if len(rows) > size {
		rows = rows[:size]
		last := rows[size-1]
		resp.NextPageToken = resname.EncodePageToken(resname.PageToken{Parent: bound,
			After: strconv.FormatInt(last.Minute.Unix(), 10) + "/" + last.Provider + "/" + last.Actor})
	}
	for _, r := range rows {
		resp.TokenReads = append(resp.TokenReads, &mcpauthv1.TokenRead{Provider: resname.ProviderName(tenant, r.Provider), Actor: r.Actor,
			MinuteStartTime: timestamppb.New(r.Minute), ReadCount: r.Count, FirstReadTime: timestamppb.New(r.First),
			LastReadTime: timestamppb.New(r.Last)})
	}
	return resp, nil
}

// decodeReadsCursor reads the position a page token holds: "minute/provider/actor".
func decodeReadsCursor(s string) (readlog.Cursor, error) {
	if s == "" {
		return readlog.Cursor{}, nil
	}
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 {
		return readlog.Cursor{}, apperr.Invalid("page_token", "is not a valid page token")
	}
	m, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil || m <= 0 {
		return readlog.Cursor{}, apperr.Invalid("page_token", "is not a valid page token")
	}
	return readlog.Cursor{Minute: time.Unix(m, 0).UTC(), Provider: parts[1], Actor: parts[2]}, nil
}
