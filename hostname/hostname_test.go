package hostname

import "testing"

func TestASCIIAndValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, ascii string
		valid     bool
	}{
		{"Example.COM", "example.com", true},
		{"mcp_server.internal", "mcp_server.internal", true},
		{"bücher.example", "xn--bcher-kva.example", true},
		{"１２７.0.0.1", "127.0.0.1", false}, // full-width digits become an address
		{"127.1", "127.1", false},
		{"0x7f000001", "0x7f000001", false},
		{"a.0x1g", "a.0x1g", false},
		{"0177.0.0.1", "0177.0.0.1", false},
		{"-a.example", "-a.example", false},
		{"a..b", "a..b", false},
		{"a b", "a b", false},
		{"", "", false},
		{"x.y2k", "x.y2k", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			a, err := ASCII(tt.in)
			if err != nil {
				t.Fatalf("ASCII(%q): %v", tt.in, err)
			}
			if a != tt.ascii {
				t.Errorf("ASCII(%q) = %q, want %q", tt.in, a, tt.ascii)
			}
			if got := Valid(a); got != tt.valid {
				t.Errorf("Valid(%q) = %v, want %v", a, got, tt.valid)
			}
		})
	}
	if Valid(string(make([]byte, 254))) {
		t.Error("a 254-byte name is valid")
	}
	if _, err := ASCII("a\u00ad\u0000.example"); err == nil {
		t.Error("ASCII accepted a name IDNA refuses")
	}
}

func FuzzValid(f *testing.F) {
	for _, s := range []string{"example.com", "127.0.0.1", "xn--bcher-kva.example", "a_b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ASCII(s)
		if err != nil {
			return
		}
		if Valid(a) && (len(a) > 253 || a == "") {
			t.Fatalf("Valid(%q) accepted an impossible name", a)
		}
	})
}
