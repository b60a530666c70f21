package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// readmeDefaultWording lists the variables whose default the README's
// configuration table states in words rather than as the struct tag's
// value, because the tag holds a sentinel that Config resolves.
var readmeDefaultWording = map[string]string{
	// -1 means "one million on SQLite, none on PostgreSQL" (AuditRowBound).
	"MCPAUTH_AUDIT_MAX_ROWS": "1000000",
}

// envVars returns every environment variable Config reads, with the
// default its struct tag gives ("" when it has none).
func envVars(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		tag, ok := typ.Field(i).Tag.Lookup("env")
		if !ok {
			continue
		}
		parts := strings.Split(tag, ",")
		name, def := strings.TrimSpace(parts[0]), ""
		for _, opt := range parts[1:] {
			if v, ok := strings.CutPrefix(strings.TrimSpace(opt), "default="); ok {
				def = v
			}
		}
		out[name] = def
	}
	if len(out) < 40 {
		t.Fatalf("found only %d env tags on Config: the reflection walk is broken", len(out))
	}
	return out
}

// configurationTable returns the rows of the README's configuration table
// (the first table under "## Configuration"), keyed by each variable its
// first cell names, valued by its default cell.
func configurationTable(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n## Configuration\n")
	if !ok {
		t.Fatal(`README.md has no "## Configuration" section`)
	}
	rows := map[string]string{}
	inTable := false
	for line := range strings.SplitSeq(section, "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		for name := range strings.SplitSeq(cells[1], ",") {
			name = strings.Trim(strings.TrimSpace(name), "`")
			if strings.HasPrefix(name, "MCPAUTH_") {
				rows[name] = cells[2]
			}
		}
	}
	return rows
}

// TestREADMEConfigurationTableIsComplete checks that the README's
// configuration table has a row for every MCPAUTH_ variable Config reads,
// that the row states the struct tag's default, and that the table names
// no variable Config does not read.
func TestREADMEConfigurationTableIsComplete(t *testing.T) {
	t.Parallel()
	vars := envVars(t)
	rows := configurationTable(t)
	for name, def := range vars {
		cell, ok := rows[name]
		if !ok {
			t.Errorf("README configuration table has no row for %s (default %q)", name, def)
			continue
		}
		want := def
		if w, ok := readmeDefaultWording[name]; ok {
			want = w
		}
		if want == "" {
			continue
		}
		// Quoted as code, so that a default of 5s is not found in 15s.
		if !strings.Contains(strings.ReplaceAll(cell, ",", ""), "`"+want+"`") {
			t.Errorf("README row of %s states default %q, want it to name %q", name, strings.TrimSpace(cell), want)
		}
	}
	for name := range rows {
		if _, ok := vars[name]; !ok {
			t.Errorf("README configuration table names %s, which Config does not read", name)
		}
	}
}
