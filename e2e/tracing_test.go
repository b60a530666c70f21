package e2e

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"
)

// spanText is everything a span carries that an exporter would send: name,
// attributes, events and their attributes, status, links, resource.
func spanText(s sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	kv := func(attrs []attribute.KeyValue) {
		for _, a := range attrs {
			b.WriteString(string(a.Key) + "=" + a.Value.Emit() + "\n")
		}
	}
	b.WriteString(s.Name() + "\n" + s.Status().Description + "\n")
	kv(s.Attributes())
	for _, e := range s.Events() {
		b.WriteString(e.Name + "\n")
		kv(e.Attributes)
	}
	for _, l := range s.Links() {
		kv(l.Attributes)
	}
	kv(s.Resource().Attributes())
	return b.String()
}

// TestTracesHoldNoSecret records every span of a full OAuth flow (dynamic
// registration with a client secret, PKCE, callback), a refresh, token
// reads over gRPC and REST and tool calls, and checks that the spans cover
// each layer (gRPC, gateway, browser routes, outbound HTTP, database,
// Redis) while no span holds a token, secret, code, verifier, state, flow
// handle, API key, stored header or the secret part of a server URL.
func TestTracesHoldNoSecret(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	redisURL, _, _ := oaRedis(t)
	const hdrSecret, urlSecret = "hdr-secret-7f3a", "url-secret-91bc"
	f := oaSetup(t, testauthz.AuthServerOptions{DCR: true, IssParameter: true, AccessTokenLifetime: 2 * time.Second},
		testauthz.MCPServerOptions{}, Options{Postgres: true, RedisURL: redisURL, Env: oaAllowEnv("MCPAUTH_REFRESH_MARGIN_MAX", "1s"),
			AppOptions: []app.Option{app.WithTracerProvider(tp)}},
		func(p *mcpauthv1.Provider) {
			p.Headers = map[string]string{"X-Api-Key": hdrSecret}
			u, _ := url.Parse(p.ServerUrl)
			q := u.Query()
			q.Set("k", urlSecret)
			u.RawQuery = q.Encode()
			p.ServerUrl = u.String()
		})
	start := f.Start(t)
	p := oaOpen(t, NewBrowser(t), start.GetAuthorizationUrl())
	if p.Code != http.StatusOK || p.Title != "Authorization complete" {
		t.Fatalf("flow did not complete: %d %q %q", p.Code, p.Title, p.Reason)
	}
	tok1, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
	if err != nil {
		t.Fatalf("GetAccessToken: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // inside the refresh margin: the next read refreshes
	tok2, err := f.S.OAuth().GetAccessToken(f.Ctx, &mcpauthv1.GetAccessTokenRequest{Name: f.Name})
	if err != nil {
		t.Fatalf("GetAccessToken after expiry: %v", err)
	}
	if f.AS.RefreshCount() == 0 {
		t.Fatal("no refresh happened: the refresh token was never sent")
	}
	args, _ := structpb.NewStruct(map[string]any{"text": "hi"})
	if _, err := f.S.Tools().CallTool(f.Ctx, &mcpauthv1.CallToolRequest{Name: f.Name, Tool: "echo", Arguments: args}); err != nil {
		t.Fatalf("CallTool: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPost, f.S.HTTPURL+"/v1/"+f.Name+":accessToken", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+f.S.AdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("REST accessToken: %v %v", resp, err)
	}
	resp.Body.Close()
	if err := tp.ForceFlush(t.Context()); err != nil {
		t.Fatal(err)
	}

	secrets := map[string]string{"admin API key": f.S.AdminKey, "stored header": hdrSecret, "server URL query": urlSecret,
		"access token": tok1.GetAccessToken(), "refreshed access token": tok2.GetAccessToken()}
	au, err := url.Parse(start.GetAuthorizationUrl())
	if err != nil {
		t.Fatal(err)
	}
	secrets["flow handle"] = au.Path[strings.LastIndexByte(au.Path, '/')+1:]
	for _, r := range f.AS.RequestsTo("/authorize") {
		secrets["state"] = r.Query.Get("state")
		secrets["code_challenge"] = r.Query.Get("code_challenge")
	}
	for i, r := range f.AS.RequestsTo("/token") {
		for _, k := range []string{"code", "code_verifier", "refresh_token", "client_secret"} {
			if v := r.Form.Get(k); v != "" {
				secrets[k+"#"+string(rune('0'+i))] = v
			}
		}
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Basic ") {
			raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(h, "Basic "))
			if _, pass, ok := strings.Cut(string(raw), ":"); ok {
				if pass, err := url.QueryUnescape(pass); err == nil && pass != "" {
					secrets["client secret"] = pass
				}
			}
		}
	}
	for _, k := range []string{"state", "code#0", "code_verifier#0", "refresh_token#1", "client secret"} {
		if secrets[k] == "" {
			t.Errorf("the flow did not yield a %s to look for", k)
		}
	}

	spans := rec.Ended()
	kinds := map[string]bool{}
	for _, s := range spans {
		text := spanText(s)
		for what, v := range secrets {
			if v != "" && strings.Contains(text, v) {
				t.Errorf("span %q holds the %s:\n%s", s.Name(), what, text)
			}
		}
		attrs := map[attribute.Key]string{}
		for _, a := range s.Attributes() {
			attrs[a.Key] = a.Value.Emit()
		}
		switch {
		case s.SpanKind() == trace.SpanKindServer && attrs["rpc.method"] == "mcpauth.v1.OAuthService/GetAccessToken":
			kinds["grpc GetAccessToken"] = true
		case s.SpanKind() == trace.SpanKindServer && attrs["url.path"] == "/v1/oauth/callback":
			kinds["browser callback"] = true
		case s.SpanKind() == trace.SpanKindServer && attrs["url.path"] == "/v1/oauth/authorize/{flow}":
			kinds["browser authorize (redacted)"] = true
		case s.SpanKind() == trace.SpanKindServer && strings.HasSuffix(attrs["url.path"], ":accessToken"):
			kinds["gateway"] = true
		case s.SpanKind() == trace.SpanKindClient && attrs["url.full"] != "":
			kinds["outbound HTTP"] = true
			if u, err := url.Parse(attrs["url.full"]); err != nil || u.Path != "" || u.RawQuery != "" {
				t.Errorf("outbound span shows more than scheme and host: %q", attrs["url.full"])
			}
		case attrs["db.system.name"] == "postgresql" && attrs["db.query.text"] != "":
			kinds["database"] = true
		case attrs["db.system"] == "redis" || attrs["db.system.name"] == "redis":
			kinds["redis"] = true
		}
	}
	for _, k := range []string{"grpc GetAccessToken", "browser callback", "browser authorize (redacted)", "gateway", "outbound HTTP", "database", "redis"} {
		if !kinds[k] {
			t.Errorf("no %s span among %d spans", k, len(spans))
		}
	}
}
