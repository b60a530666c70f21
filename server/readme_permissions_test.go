package server

import (
	"os"
	"strings"
	"testing"
)

// readmePermissions parses the README's table of the permission each RPC
// needs (the table whose header is "| service | permission: RPCs |") into
// full method names ("/mcpauth.v1.Service/Method") and permissions.
func readmePermissions(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(raw), "\n| service | permission: RPCs |\n")
	if !ok {
		t.Fatal("README.md has no permission table")
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) != 4 || strings.HasPrefix(cells[1], "---") {
			continue
		}
		service := strings.Trim(strings.TrimSpace(cells[1]), "`")
		for group := range strings.SplitSeq(cells[2], ";") {
			perm, methods, ok := strings.Cut(group, ":")
			if !ok {
				t.Fatalf("README permission table: %q has no \"permission: RPCs\"", group)
			}
			perm = strings.Trim(strings.TrimSpace(perm), "`")
			for m := range strings.SplitSeq(methods, ",") {
				full := "/mcpauth.v1." + service + "/" + strings.TrimSpace(m)
				if prev, dup := out[full]; dup {
					t.Errorf("README permission table names %s twice (%s, %s)", full, prev, perm)
				}
				out[full] = perm
			}
		}
	}
	return out
}

// TestREADMEPermissionTable checks that the README's permission table says
// exactly what methodPermissions enforces: every RPC, with its permission,
// and nothing else.
func TestREADMEPermissionTable(t *testing.T) {
	t.Parallel()
	doc := readmePermissions(t)
	for method, perm := range methodPermissions {
		got, ok := doc[method]
		switch {
		case !ok:
			t.Errorf("README permission table lacks %s (%s)", method, perm)
		case got != string(perm):
			t.Errorf("README permission table says %s needs %s; it needs %s", method, got, perm)
		}
	}
	for method := range doc {
		if _, ok := methodPermissions[method]; !ok {
			t.Errorf("README permission table names %s, which methodPermissions does not list", method)
		}
	}
}
