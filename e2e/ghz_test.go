package e2e

import (
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ghzReport is the part of ghz's JSON report (-O json) the benchmarks read.
type ghzReport struct {
	Count   int64   `json:"count"`
	Total   int64   `json:"total"` // nanoseconds
	RPS     float64 `json:"rps"`
	Latency []struct {
		Percentage int   `json:"percentage"`
		Latency    int64 `json:"latency"` // nanoseconds
	} `json:"latencyDistribution"`
	Errors map[string]int64 `json:"errorDistribution"`
}

// ghzLoad runs the ghz load generator (github.com/bojand/ghz) at path
// against the gRPC server at addr: method call (package.Service/Method, its
// descriptor read through server reflection) with the JSON request data and
// the API key, conc concurrent callers over one connection, for d.
func ghzLoad(tb testing.TB, path, addr, call, data, key string, conc int, d time.Duration) loadResult {
	tb.Helper()
	args := []string{"--insecure", "--call", call, "-d", data, "-c", strconv.Itoa(conc), "--connections", "1",
		"-z", d.String(), "-O", "json"}
	if key != "" {
		args = append(args, "-m", `{"authorization":"Bearer `+key+`"}`)
	}
	out, err := exec.Command(path, append(args, addr)...).Output()
	if err != nil {
		tb.Fatalf("ghz %s: %v\n%s", call, err, out)
	}
	var r ghzReport
	if err := json.Unmarshal(out, &r); err != nil {
		tb.Fatalf("ghz %s report: %v", call, err)
	}
	res := loadResult{N: r.Count, Duration: time.Duration(r.Total)}
	for msg, n := range r.Errors {
		// ghz cancels the calls in flight and closes its connection when
		// the duration ends ("Canceled", "transport is closing"): not the
		// server's errors.
		if strings.Contains(msg, "Canceled") || strings.Contains(msg, "is closing") {
			continue
		}
		tb.Logf("ghz %s: %d × %s", call, n, msg)
		res.Errors += n
	}
	for _, l := range r.Latency {
		switch l.Percentage {
		case 50:
			res.P50 = time.Duration(l.Latency)
		case 99:
			res.P99 = time.Duration(l.Latency)
		}
	}
	return res
}
