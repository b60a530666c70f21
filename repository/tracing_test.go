package repository

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mcpauth/mcpauth/internal/testenv"
)

// TestTraceRecordsStatementsNotValues: each query is a span named after its
// operation whose statement keeps placeholders; no bound value appears.
func TestTraceRecordsStatementsNotValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := Open(ctx, testenv.SQLiteDSN(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	if err := st.Trace(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))); err != nil {
		t.Fatal(err)
	}
	const tenant, id = "tenant-value-5e1", "provider-value-77a"
	if _, err := st.GetProvider(ctx, tenant, id); err == nil {
		t.Fatal("found a provider in an empty database")
	}
	spans := rec.Ended()
	if len(spans) == 0 {
		t.Fatal("no span for the query")
	}
	var selects int
	for _, s := range spans {
		attrs := map[attribute.Key]string{}
		for _, a := range s.Attributes() {
			attrs[a.Key] = a.Value.Emit()
			if strings.Contains(a.Value.Emit(), tenant) || strings.Contains(a.Value.Emit(), id) {
				t.Errorf("span %q attribute %s holds a bound value: %q", s.Name(), a.Key, a.Value.Emit())
			}
		}
		if s.Name() == "SELECT" && attrs["db.system.name"] == "sqlite" && strings.Contains(attrs["db.query.text"], "?") {
			selects++
		}
	}
	if selects == 0 {
		t.Errorf("no SELECT span with a placeholder statement among %d spans", len(spans))
	}
}
