package e2e

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/mcpauth/mcpauth/e2e/internal/testauthz"
)

// tokMetrics fetches the Prometheus exposition from the service's HTTP port.
func tokMetrics(tb testing.TB, s *Service) string {
	tb.Helper()
	resp, err := http.Get(s.HTTPURL + "/metrics")
	if err != nil {
		tb.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(body)
}

// tokMetricValue returns the value of the sample named exactly series (name
// and labels as exposed), or 0 when it is absent.
func tokMetricValue(tb testing.TB, exposition, series string) float64 {
	tb.Helper()
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			tb.Fatalf("metric %s: %v", series, err)
		}
		return v
	}
	return 0
}

// TestTokenMetrics: a refresh shows in mcpauth_token_refreshes_total, and
// the metrics carry no tenant, provider, client or token.
func TestTokenMetrics(t *testing.T) {
	t.Parallel()
	c := tokStart(t, tokOptions{AS: testauthz.AuthServerOptions{AccessTokenLifetime: tokLifetime},
		Tenant: "tenant-metrics-q7", ID: "provider-metrics-x9"})
	s := c.Replicas[0]
	const series = `mcpauth_token_refreshes_total{outcome="success"}`
	before := tokMetricValue(t, tokMetrics(t, s), series)
	// The only read comes once the token has expired, so it waits for
	// exactly one refresh. (A read while the token is due but valid may be
	// served it while the refresh runs on, past the metrics read.)
	c.waitDue(t, 0)
	tok := c.mustGet(t, 0).GetAccessToken()
	exp := tokMetrics(t, s)

	chain := tokChain(t, c.AS)
	if len(chain) != 2 || tok != chain[1].AccessToken {
		t.Fatalf("%d refreshes at the server, want the one that issued the token the read returned", len(chain)-1)
	}
	if after := tokMetricValue(t, exp, series); after != before+1 {
		t.Fatalf("%s went from %v to %v, want +1", series, before, after)
	}
	if v := tokMetricValue(t, exp, "mcpauth_tokens_served_total"); v != 1 {
		t.Errorf("mcpauth_tokens_served_total = %v after one read", v)
	}
	secrets := map[string]string{"tenant id": c.Tenant, "provider id": c.ID,
		"authorization server address": strings.TrimPrefix(c.AS.Origin, "http://"),
		"MCP server URL":               c.MCP.URL()}
	for i, is := range chain {
		secrets["access token "+strconv.Itoa(i)] = is.AccessToken
		secrets["refresh token "+strconv.Itoa(i)] = is.RefreshToken
	}
	for i, r := range tokRefreshRequests(c.AS) {
		secrets["client id "+strconv.Itoa(i)] = tokClientOf(r)
	}
	for what, v := range secrets {
		if v == "" {
			t.Fatalf("test setup: %s is empty", what)
		}
		if strings.Contains(exp, v) {
			t.Errorf("the metrics contain the %s", what)
		}
	}
}
