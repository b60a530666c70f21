package repository

import (
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"
)

// spanKey is where a statement's span waits between GORM's before and after
// callbacks.
const spanKey = "mcpauth:otel-span"

// Trace makes every query a client span of tp, named after its operation
// (SELECT, INSERT, ...), with the statement text as GORM built it: bound
// parameters stay placeholders, so no value (ciphertext, tenant data) is
// recorded. gorm.io/plugin/opentelemetry does the same but links the MySQL
// and ClickHouse drivers into the binary.
func (s *Store) Trace(tp trace.TracerProvider) error {
	tracer := tp.Tracer("github.com/mcpauth/mcpauth/repository")
	s.tracer = tracer
	system := "sqlite"
	if s.db.Name() == "postgres" {
		system = "postgresql"
	}
	before := func(db *gorm.DB) {
		ctx, span := tracer.Start(db.Statement.Context, "db", trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("db.system.name", system)))
		db.Statement.Context = ctx
		db.InstanceSet(spanKey, span)
	}
	after := func(db *gorm.DB) {
		v, ok := db.InstanceGet(spanKey)
		if !ok {
			return
		}
		span := v.(trace.Span)
		defer span.End()
		query := db.Statement.SQL.String()
		op := strings.ToUpper(firstWord(query))
		if op != "" {
			span.SetName(op)
			span.SetAttributes(attribute.String("db.operation.name", op))
		}
		if table := db.Statement.Table; table != "" {
			span.SetAttributes(attribute.String("db.collection.name", table))
		}
		span.SetAttributes(attribute.String("db.query.text", query), attribute.Int64("db.response.returned_rows", db.RowsAffected))
		if err := db.Error; err != nil && err != gorm.ErrRecordNotFound {
			// The driver's message names the failing constraint or
			// connection, not bound values.
			span.SetStatus(codes.Error, err.Error())
		}
	}
	cb := s.db.Callback()
	for _, reg := range []struct {
		name          string
		before, after func(string, func(*gorm.DB)) error
	}{
		{"create", func(n string, f func(*gorm.DB)) error { return cb.Create().Before("gorm:create").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Create().After("gorm:create").Register(n, f) }},
		{"query", func(n string, f func(*gorm.DB)) error { return cb.Query().Before("gorm:query").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Query().After("gorm:query").Register(n, f) }},
		{"update", func(n string, f func(*gorm.DB)) error { return cb.Update().Before("gorm:update").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Update().After("gorm:update").Register(n, f) }},
		{"delete", func(n string, f func(*gorm.DB)) error { return cb.Delete().Before("gorm:delete").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Delete().After("gorm:delete").Register(n, f) }},
		{"row", func(n string, f func(*gorm.DB)) error { return cb.Row().Before("gorm:row").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Row().After("gorm:row").Register(n, f) }},
		{"raw", func(n string, f func(*gorm.DB)) error { return cb.Raw().Before("gorm:raw").Register(n, f) },
			func(n string, f func(*gorm.DB)) error { return cb.Raw().After("gorm:raw").Register(n, f) }},
	} {
		if err := reg.before("otel:before_"+reg.name, before); err != nil {
			return err
		}
		if err := reg.after("otel:after_"+reg.name, after); err != nil {
			return err
		}
	}
	return nil
}

func firstWord(q string) string {
	q = strings.TrimLeft(q, " \t\r\n;(")
	if i := strings.IndexAny(q, " \t\r\n("); i >= 0 {
		return q[:i]
	}
	return q
}
