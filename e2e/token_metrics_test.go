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
	old := c.mustGet(t, 0).GetAccessToken()
	c.waitDue(t, tokDueMargin)
	tok := c.mustGet(t, 0).GetAccessToken()
	if tok == old {
		t.Fatal("no refresh happened")
	}

	exp := tokMetrics(t, s)
	if after := tokMetricValue(t, exp, series); after != before+1 {
		t.Fatalf("%s went from %v to %v, want +1", series, before, after)
	}
	if v := tokMetricValue(t, exp, "mcpauth_tokens_served_total"); v < 2 {
		t.Errorf("mcpauth_tokens_served_total = %v after two reads", v)
	}
	secrets := map[string]string{"tenant id": c.Tenant, "provider id": c.ID, "old access token": old, "access token": tok,
		"authorization server address": strings.TrimPrefix(c.AS.Origin, "http://"),
		"MCP server URL":               c.MCP.URL()}
	for i, r := range tokRefreshRequests(c.AS) {
		secrets["refresh token "+strconv.Itoa(i)] = r.Form.Get("refresh_token")
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
