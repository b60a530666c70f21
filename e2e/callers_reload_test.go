package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	mcpauthv1 "github.com/mcpauth/mcpauth/gen/mcpauth/v1"

	"github.com/mcpauth/mcpauth/app"
	"github.com/mcpauth/mcpauth/caller"
	"github.com/mcpauth/mcpauth/config"
)

// writeCallersFile replaces path atomically (rename), as an operator's
// tooling or a Kubernetes Secret volume does.
func writeCallersFile(tb testing.TB, path string, f any) {
	tb.Helper()
	raw, ok := f.([]byte)
	if !ok {
		var err error
		if raw, err = json.Marshal(f); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.WriteFile(path+".tmp", raw, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		tb.Fatal(err)
	}
}

// eventually waits (up to a minute) until check returns "" and fails with
// its last answer otherwise. A wait for a periodic reload, not a timing
// assertion.
func eventually(tb testing.TB, check func() string) {
	tb.Helper()
	var last string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if last = check(); last == "" {
			return
		}
	}
	tb.Fatal(last)
}

func listCode(tb testing.TB, c mcpauthv1.MCPProviderServiceClient, ctx context.Context, tenant string) codes.Code {
	tb.Helper()
	_, err := c.ListProviders(ctx, &mcpauthv1.ListProvidersRequest{Parent: "tenants/" + tenant})
	return status.Code(err)
}

// TestCallersFileReloadedWhileServing changes the callers file under a
// running service: a new key starts working and a removed key stops, with
// no restart; a broken file keeps the previous callers and logs why
// without quoting the file; a later valid file applies again.
func TestCallersFileReloadedWhileServing(t *testing.T) {
	t.Parallel()
	a, aKey := NewCaller(t, "svc-a", []string{"acme"}, caller.ProvidersRead)
	b, bKey := NewCaller(t, "svc-b", []string{"acme"}, caller.ProvidersRead)
	s := Start(t, Options{Callers: &caller.File{Callers: []caller.FileCaller{a}},
		Env: map[string]string{"MCPAUTH_CALLERS_RELOAD_INTERVAL": "50ms"}})
	path := filepath.Join(s.DataDir, "callers.json")
	p := s.Providers()
	if c := listCode(t, p, Ctx(t, aKey), "acme"); c != codes.OK {
		t.Fatalf("key A at start: %v", c)
	}
	if c := listCode(t, p, Ctx(t, bKey), "acme"); c != codes.Unauthenticated {
		t.Fatalf("key B at start: %v", c)
	}

	writeCallersFile(t, path, caller.File{Callers: []caller.FileCaller{b}})
	eventually(t, func() string {
		if c := listCode(t, p, Ctx(t, bKey), "acme"); c != codes.OK {
			return "key B never accepted after the change: " + c.String()
		}
		return ""
	})
	if c := listCode(t, p, Ctx(t, aKey), "acme"); c != codes.Unauthenticated {
		t.Fatalf("removed key A after the change: %v, want Unauthenticated", c)
	}

	// Broken: not JSON. Then valid JSON with an invalid entry.
	for _, bad := range [][]byte{[]byte(`{"callers": [`), []byte(`{"callers": [{"name": "svc-a", "key_sha256": "` + a.KeySHA256 + `", "tenants": ["acme"], "permissions": ["fly"]}]}`)} {
		before := strings.Count(s.Logs.String(), "callers file not reloaded")
		writeCallersFile(t, path, bad)
		eventually(t, func() string {
			if strings.Count(s.Logs.String(), "callers file not reloaded") == before {
				return "no log line says why the broken callers file was refused"
			}
			return ""
		})
		if c := listCode(t, p, Ctx(t, bKey), "acme"); c != codes.OK {
			t.Fatalf("key B after a broken file: %v, want the previous callers kept", c)
		}
		if c := listCode(t, p, Ctx(t, aKey), "acme"); c != codes.Unauthenticated {
			t.Fatalf("key A of the broken file: %v", c)
		}
	}
	logs := s.Logs.String()
	if !strings.Contains(logs, `unknown permission \"fly\"`) || strings.Contains(logs, a.KeySHA256) || strings.Contains(logs, aKey) {
		t.Fatalf("refusal logs must say why without quoting keys or hashes:\n%s", logs)
	}

	writeCallersFile(t, path, caller.File{Callers: []caller.FileCaller{a, b}})
	eventually(t, func() string {
		if c := listCode(t, p, Ctx(t, aKey), "acme"); c != codes.OK {
			return "key A never accepted after a valid file followed a broken one: " + c.String()
		}
		return ""
	})
}

// testPKI is a CA and certificates issued by it, generated per test.
type testPKI struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  string
}

func newTestPKI(tb testing.TB, name string) *testPKI {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &testPKI{dir: tb.TempDir(), caCert: cert, caKey: key}
	p.caPEM = p.write(tb, name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *testPKI) write(tb testing.TB, name, typ string, der []byte) string {
	tb.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// issue returns a key pair signed by the CA: a server certificate for
// 127.0.0.1 or a client certificate with subject and URI SANs.
func (p *testPKI) issue(tb testing.TB, name string, server bool, subject pkix.Name, uris ...string) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			tb.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		tb.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	certPath := p.write(tb, name+".pem", "CERTIFICATE", der)
	keyPath := p.write(tb, name+"-key.pem", "EC PRIVATE KEY", keyDER)
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		tb.Fatal(err)
	}
	return pair
}

// TestMTLSCallers: with MCPAUTH_TLS_CLIENT_CA_FILE, a gRPC caller presenting
// a certificate the CA verifies is the callers-file entry naming its URI SAN
// (SPIFFE id) or its subject, with that entry's tenants and permissions; API
// keys still work beside them; a verified certificate no entry names is
// UNAUTHENTICATED; a certificate from another CA fails the handshake. The
// mapping follows the callers file as it changes.
func TestMTLSCallers(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t, "callers")
	pki.issue(t, "server", true, pkix.Name{CommonName: "mcpauth"})
	srvCert := filepath.Join(pki.dir, "server.pem")
	srvKey := filepath.Join(pki.dir, "server-key.pem")
	billing := pki.issue(t, "billing", false, pkix.Name{CommonName: "billing"}, "spiffe://acme.test/ns/prod/sa/billing")
	ops := pki.issue(t, "ops", false, pkix.Name{CommonName: "ops", Organization: []string{"acme"}})
	stranger := pki.issue(t, "stranger", false, pkix.Name{CommonName: "stranger"}, "spiffe://acme.test/ns/prod/sa/stranger")
	foreign := newTestPKI(t, "foreign").issue(t, "foreign", false, pkix.Name{CommonName: "billing"}, "spiffe://acme.test/ns/prod/sa/billing")

	keyed, key := NewCaller(t, "keyed", []string{"acme"}, caller.ProvidersRead)
	file := caller.File{Callers: []caller.FileCaller{keyed,
		{Name: "billing", CertURI: "spiffe://acme.test/ns/prod/sa/billing", Tenants: []string{"acme"}, Permissions: []string{"providers.read"}},
		{Name: "ops", CertSubject: "CN=ops,O=acme", Tenants: []string{"*"}, Permissions: []string{"providers.read"}},
	}}
	dir := t.TempDir()
	callersPath := filepath.Join(dir, "callers.json")
	writeCallersFile(t, callersPath, file)
	cfg, err := config.Load(context.Background(), nil, envconfig.MapLookuper(map[string]string{
		"MCPAUTH_DATA_DIR": dir, "MCPAUTH_CALLERS_FILE": callersPath, "MCPAUTH_CALLERS_RELOAD_INTERVAL": "50ms",
		"MCPAUTH_TLS_CERT_FILE": srvCert, "MCPAUTH_TLS_KEY_FILE": srvKey, "MCPAUTH_TLS_CLIENT_CA_FILE": pki.caPEM,
		"MCPAUTH_BACKGROUND_REFRESH_INTERVAL": "0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	a, err := app.New(context.Background(), cfg, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, gl, hl) }()
	t.Cleanup(func() { cancel(); <-done; a.Close() })

	roots := x509.NewCertPool()
	roots.AddCert(pki.caCert)
	client := func(certs ...tls.Certificate) mcpauthv1.MCPProviderServiceClient {
		tc := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if len(certs) > 0 {
			// Present the certificate whatever CAs the server names (Go's
			// client would otherwise withhold one the server cannot verify).
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
		}
		conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return mcpauthv1.NewMCPProviderServiceClient(conn)
	}
	noKey := Ctx(t, "")
	wait := func(c mcpauthv1.MCPProviderServiceClient, ctx context.Context, tenant string, want codes.Code) {
		t.Helper()
		eventually(t, func() string {
			if got := listCode(t, c, ctx, tenant); got != want {
				return "tenant " + tenant + ": " + got.String() + ", want " + want.String()
			}
			return ""
		})
	}
	billingC, opsC, strangerC := client(billing), client(ops), client(stranger)
	wait(billingC, noKey, "acme", codes.OK) // the first call also waits for the server to listen
	for _, tt := range []struct {
		name   string
		c      mcpauthv1.MCPProviderServiceClient
		ctx    context.Context
		tenant string
		want   codes.Code
	}{
		{"URI SAN, its tenant", billingC, noKey, "acme", codes.OK},
		{"URI SAN, another tenant", billingC, noKey, "globex", codes.PermissionDenied},
		{"subject, any tenant", opsC, noKey, "globex", codes.OK},
		{"verified but unmapped", strangerC, noKey, "acme", codes.Unauthenticated},
		{"API key without a certificate", client(), Ctx(t, key), "acme", codes.OK},
		{"no key, no certificate", client(), noKey, "acme", codes.Unauthenticated},
		{"another CA", client(foreign), noKey, "acme", codes.Unavailable},
	} {
		if got := listCode(t, tt.c, tt.ctx, tt.tenant); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
	_, err = strangerC.ListProviders(noKey, &mcpauthv1.ListProvidersRequest{Parent: "tenants/acme"})
	if !strings.Contains(status.Convert(err).Message(), "cert_uri") {
		t.Errorf("unmapped certificate error %q does not say how to map it", status.Convert(err).Message())
	}

	// The mapping follows the file: billing removed, stranger added.
	file.Callers[1] = caller.FileCaller{Name: "stranger", CertURI: "spiffe://acme.test/ns/prod/sa/stranger", Tenants: []string{"acme"}, Permissions: []string{"providers.read"}}
	writeCallersFile(t, callersPath, file)
	wait(strangerC, noKey, "acme", codes.OK)
	wait(billingC, noKey, "acme", codes.Unauthenticated)
}
