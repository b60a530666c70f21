package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/api/openapi"
)

// swaggerDoc is the part of an OpenAPI v2 document the tests read.
type swaggerDoc struct {
	Swagger string `json:"swagger"`
	Paths   map[string]map[string]struct {
		OperationID string `json:"operationId"`
		Parameters  []struct {
			Name    string `json:"name"`
			In      string `json:"in"`
			Pattern string `json:"pattern"`
		} `json:"parameters"`
	} `json:"paths"`
	SecurityDefinitions map[string]any `json:"securityDefinitions"`
}

// openAPIPath turns a google.api.http template into protoc-gen-openapiv2's
// path ("{name=tenants/*}" becomes "{name}") and the patterns of its
// variables ("tenants/[^/]+").
func openAPIPath(tmpl string) (string, map[string]string) {
	patterns := map[string]string{}
	path := regexp.MustCompile(`\{([^}=]+)(?:=([^}]*))?\}`).ReplaceAllStringFunc(tmpl, func(v string) string {
		m := regexp.MustCompile(`\{([^}=]+)(?:=([^}]*))?\}`).FindStringSubmatch(v)
		if m[2] != "" {
			patterns[m[1]] = strings.ReplaceAll(m[2], "*", "[^/]+")
		}
		return "{" + m[1] + "}"
	})
	return path, patterns
}

// TestOpenAPIListsEveryRoute: the served document has exactly the REST
// routes of the API's google.api.http options (the ones the gateway serves:
// TestGatewayWrongMethod proves each reaches its RPC), each under its RPC's
// operation id and with its path variables' patterns, and nothing else.
func TestOpenAPIListsEveryRoute(t *testing.T) {
	t.Parallel()
	h := NewHTTPHandler(HTTPDeps{Gateway: http.NotFoundHandler(), OpenAPI: openapi.Document})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, OpenAPIPath, nil)) // no key
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %q", OpenAPIPath, w.Code, w.Header().Get("Content-Type"))
	}
	var doc swaggerDoc
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatalf("document does not decode: %v", err)
	}
	if doc.Swagger != "2.0" || doc.SecurityDefinitions["bearer"] == nil {
		t.Errorf("swagger %q, security definitions %v", doc.Swagger, doc.SecurityDefinitions)
	}
	routes := restRoutes(t)
	for _, r := range routes {
		path, patterns := openAPIPath(r.Template)
		op, ok := doc.Paths[path][strings.ToLower(r.Method)]
		if !ok {
			t.Errorf("%s %s (%s) is not in the document", r.Method, path, r.RPC)
			continue
		}
		parts := strings.Split(strings.TrimPrefix(r.RPC, "/"), "/")
		if want := parts[0][strings.LastIndexByte(parts[0], '.')+1:] + "_" + parts[1]; op.OperationID != want {
			t.Errorf("%s %s: operation %q, want %q", r.Method, path, op.OperationID, want)
		}
		for name, pattern := range patterns {
			found := false
			for _, p := range op.Parameters {
				if p.In == "path" && p.Name == name {
					found = true
					if p.Pattern != pattern {
						t.Errorf("%s %s: parameter %s pattern %q, want %q", r.Method, path, name, p.Pattern, pattern)
					}
				}
			}
			if !found {
				t.Errorf("%s %s: no path parameter %s", r.Method, path, name)
			}
		}
	}
	ops := 0
	for _, methods := range doc.Paths {
		ops += len(methods)
	}
	if ops != len(routes) {
		t.Errorf("document has %d operations, the API %d routes", ops, len(routes))
	}
}

// TestOpenAPIPathTranslation pins the helper the test above relies on.
func TestOpenAPIPathTranslation(t *testing.T) {
	t.Parallel()
	path, patterns := openAPIPath("/v1/{provider.name=tenants/*/providers/*}:x")
	if path != "/v1/{provider.name}:x" || patterns["provider.name"] != "tenants/[^/]+/providers/[^/]+" {
		t.Fatalf("got %q %v", path, patterns)
	}
}
