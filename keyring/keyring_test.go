package keyring

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Fixed test keys, so specs are reproducible across tests.
var (
	keyA = bytes.Repeat([]byte{0xA1}, 32)
	keyB = bytes.Repeat([]byte{0xB2}, 32)
	keyC = bytes.Repeat([]byte{0xC3}, 32)

	specA  = "1:" + base64.StdEncoding.EncodeToString(keyA)
	specB  = "2:" + base64.StdEncoding.EncodeToString(keyB)
	specBA = specB + "," + specA
)

var scope = Scope{Tenant: "t1", Provider: "p1", Field: "access_token"}

func mustParse(tb testing.TB, spec string) *Keyring {
	tb.Helper()
	k, err := Parse(spec)
	if err != nil {
		tb.Fatalf("Parse: %v", err)
	}
	return k
}

func mustSeal(tb testing.TB, k *Keyring, s Scope, plaintext []byte) []byte {
	tb.Helper()
	ct, err := k.Seal(s, plaintext)
	if err != nil {
		tb.Fatalf("Seal: %v", err)
	}
	return ct
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	tests := []struct {
		name      string
		scope     Scope
		plaintext []byte
	}{
		{"empty plaintext", scope, []byte{}},
		{"short", scope, []byte("x")},
		{"token", scope, []byte("eyJhbGciOiJSUzI1NiJ9.payload.sig")},
		{"binary", scope, []byte{0, 1, 2, 0xff, 0}},
		{"large", scope, bytes.Repeat([]byte("abc"), 100_000)},
		{"no provider", Scope{Tenant: "t1", Field: "dcr_client"}, []byte("client")},
		{"unicode scope", Scope{Tenant: "租户", Provider: "p\x00", Field: "url"}, []byte("https://mcp.example.com")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ct := mustSeal(t, k, tt.scope, tt.plaintext)
			if want := minSize + len(tt.plaintext); len(ct) != want {
				t.Errorf("len(ciphertext) = %d, want %d", len(ct), want)
			}
			if ct[0] != version {
				t.Errorf("version byte = %#x", ct[0])
			}
			if len(tt.plaintext) >= 8 && bytes.Contains(ct, tt.plaintext[:8]) {
				t.Error("ciphertext contains plaintext")
			}
			got, err := k.Open(tt.scope, ct)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Errorf("Open = %q, want %q", got, tt.plaintext)
			}
			id, err := KeyID(ct)
			if err != nil || id != 1 {
				t.Errorf("KeyID = %d, %v; want 1", id, err)
			}
		})
	}
}

func TestWrongScopeFails(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, k, scope, []byte("secret-token"))
	tests := []struct {
		name  string
		scope Scope
	}{
		{"other tenant", Scope{Tenant: "t2", Provider: "p1", Field: "access_token"}},
		{"other provider", Scope{Tenant: "t1", Provider: "p2", Field: "access_token"}},
		{"other field", Scope{Tenant: "t1", Provider: "p1", Field: "refresh_token"}},
		{"no provider", Scope{Tenant: "t1", Field: "access_token"}},
		// Without length prefixes these would all produce the same AAD bytes.
		{"shifted boundary tenant/provider", Scope{Tenant: "t1p", Provider: "1", Field: "access_token"}},
		{"shifted boundary provider/field", Scope{Tenant: "t1", Provider: "p1a", Field: "ccess_token"}},
		{"case differs", Scope{Tenant: "T1", Provider: "p1", Field: "access_token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := k.Open(tt.scope, ct)
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Open = %q, %v; want ErrDecrypt", got, err)
			}
			if got != nil {
				t.Errorf("Open returned plaintext %q with an error", got)
			}
		})
	}
}

// TestUserScope: a ciphertext of one end user's grant opens only for that
// user, never for another user or for the tenant-wide grant, and the reverse.
func TestUserScope(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	alice := Scope{Tenant: "t1", Provider: "p1", Field: "access_token", User: "alice"}
	tests := []struct {
		name       string
		seal, open Scope
	}{
		{"alice to bob", alice, Scope{Tenant: "t1", Provider: "p1", Field: "access_token", User: "bob"}},
		{"alice to the tenant grant", alice, scope},
		{"tenant grant to alice", scope, alice},
		{"user case differs", alice, Scope{Tenant: "t1", Provider: "p1", Field: "access_token", User: "Alice"}},
		// The user is a fourth length-prefixed part: moving bytes between
		// the field and the user changes the associated data.
		{"shifted boundary field/user", alice, Scope{Tenant: "t1", Provider: "p1", Field: "access_tokena", User: "lice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ct := mustSeal(t, k, tt.seal, []byte("secret-token"))
			if got, err := k.Open(tt.open, ct); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("Open = %q, %v; want ErrDecrypt", got, err)
			}
			if got, err := k.Open(tt.seal, ct); err != nil || string(got) != "secret-token" {
				t.Fatalf("Open under its own scope = %q, %v", got, err)
			}
		})
	}
}

func TestInvalidScope(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, k, scope, []byte("v"))
	for _, s := range []Scope{
		{Provider: "p", Field: "f"},
		{Tenant: "t", Provider: "p"},
		{},
	} {
		t.Run(fmt.Sprintf("%+v", s), func(t *testing.T) {
			t.Parallel()
			if _, err := k.Seal(s, []byte("v")); err == nil {
				t.Error("Seal accepted an incomplete scope")
			}
			if _, err := k.Open(s, ct); err == nil {
				t.Error("Open accepted an incomplete scope")
			}
		})
	}
}

func TestEveryBitFlipFails(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, k, scope, []byte("tok"))
	for i := range len(ct) * 8 {
		flipped := slices.Clone(ct)
		flipped[i/8] ^= 1 << (i % 8)
		got, err := k.Open(scope, flipped)
		if err == nil {
			t.Fatalf("bit %d flipped: Open succeeded with %q", i, got)
		}
		// Bits in the key id may name a missing key; every other bit must
		// fail authentication.
		if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("bit %d flipped: unexpected error %v", i, err)
		}
	}
}

func TestKeyIDBitFlipAuthenticated(t *testing.T) {
	t.Parallel()
	// With both keys present, changing the id from 1 to 3 names a key that
	// exists; the ciphertext must still fail, not decrypt under it.
	k := mustParse(t, specA+",3:"+base64.StdEncoding.EncodeToString(keyC))
	ct := mustSeal(t, k, scope, []byte("tok"))
	ct[4] = 3
	if _, err := k.Open(scope, ct); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Open with id rewritten = %v, want ErrDecrypt", err)
	}
}

func TestTruncationFails(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, k, scope, []byte("some token value"))
	for n := range len(ct) {
		if got, err := k.Open(scope, ct[:n]); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("truncated to %d: Open = %q, %v; want ErrDecrypt", n, got, err)
		}
	}
	// Extending is as bad as truncating.
	if _, err := k.Open(scope, append(slices.Clone(ct), 0)); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("extended: Open = %v, want ErrDecrypt", err)
	}
}

func TestUnknownKeyID(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, mustParse(t, specB), scope, []byte("tok"))
	_, err := k.Open(scope, ct)
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Open = %v, want ErrUnknownKey", err)
	}
	if errors.Is(err, ErrDecrypt) {
		t.Error("unknown key is also reported as ErrDecrypt")
	}
}

func TestBadVersion(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	ct := mustSeal(t, k, scope, []byte("tok"))
	ct[0] = 0x02
	if _, err := KeyID(ct); !errors.Is(err, ErrDecrypt) {
		t.Errorf("KeyID = %v, want ErrDecrypt", err)
	}
	if _, err := k.Open(scope, ct); !errors.Is(err, ErrDecrypt) {
		t.Errorf("Open = %v, want ErrDecrypt", err)
	}
}

func TestRotation(t *testing.T) {
	t.Parallel()
	old := mustParse(t, specA)
	rotated := mustParse(t, specBA)
	retired := mustParse(t, specB)
	plaintext := []byte("refresh-token")
	oldCT := mustSeal(t, old, scope, plaintext)

	got, err := rotated.Open(scope, oldCT)
	if err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("rotated keyring Open(old) = %q, %v", got, err)
	}
	if rotated.PrimaryID() != 2 {
		t.Errorf("PrimaryID = %d, want 2", rotated.PrimaryID())
	}
	if ids := rotated.IDs(); !slices.Equal(ids, []uint32{1, 2}) {
		t.Errorf("IDs = %v, want [1 2]", ids)
	}
	if !rotated.Has(1) || !rotated.Has(2) || rotated.Has(3) {
		t.Error("Has disagrees with the spec")
	}
	newCT := mustSeal(t, rotated, scope, plaintext)
	if id, err := KeyID(newCT); err != nil || id != 2 {
		t.Errorf("KeyID(new) = %d, %v; want 2", id, err)
	}
	if _, err := retired.Open(scope, oldCT); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("keyring without key 1: Open(old) = %v, want ErrUnknownKey", err)
	}
	if got, err := retired.Open(scope, newCT); err != nil || !bytes.Equal(got, plaintext) {
		t.Errorf("keyring without key 1: Open(new) = %q, %v", got, err)
	}
	if _, err := old.Open(scope, newCT); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old keyring: Open(new) = %v, want ErrUnknownKey", err)
	}

	url := []byte("https://mcp.example.com/mcp")
	oldFP := old.Fingerprint("t1", "server_url", url)
	fps := rotated.Fingerprints("t1", "server_url", url)
	if len(fps) != 2 {
		t.Fatalf("Fingerprints = %v, want 2 entries", fps)
	}
	if fps[0] != rotated.Fingerprint("t1", "server_url", url) || !strings.HasPrefix(fps[0], "k2:") {
		t.Errorf("Fingerprints[0] = %q, want the primary (k2) fingerprint", fps[0])
	}
	if fps[1] != oldFP {
		t.Errorf("Fingerprints[1] = %q, want old fingerprint %q", fps[1], oldFP)
	}
}

func TestSealIsRandomized(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	a := mustSeal(t, k, scope, []byte("same"))
	b := mustSeal(t, k, scope, []byte("same"))
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal")
	}
	if bytes.Equal(a[headerSize:headerSize+nonceSize], b[headerSize:headerSize+nonceSize]) {
		t.Fatal("two seals reused a nonce")
	}
}

func TestPerTenantKeys(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	a, err := k.deriveDEK(1, "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := k.deriveDEK(1, "tenant-b")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := k.deriveDEK(1, "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 32 {
		t.Errorf("derived key is %d bytes, want 32", len(a))
	}
	if bytes.Equal(a, b) {
		t.Error("two tenants derived the same key")
	}
	if !bytes.Equal(a, a2) {
		t.Error("derivation is not deterministic")
	}
	if bytes.Equal(a, keyA) {
		t.Error("derived key equals the master key")
	}

	// Splice: tenant A's nonce and ciphertext, re-authenticated with tenant
	// B's associated data, still cannot open, because B's key differs. The
	// forged ciphertext is built with A's key but B's AAD so that only the
	// key separates the tenants.
	sA := Scope{Tenant: "tenant-a", Provider: "p", Field: "f"}
	sB := Scope{Tenant: "tenant-b", Provider: "p", Field: "f"}
	ct := mustSeal(t, k, sA, []byte("value"))
	aeadA, err := k.aead(1, "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	pt, err := k.Open(sA, ct)
	if err != nil {
		t.Fatal(err)
	}
	forged := aeadA.Seal(slices.Clone(ct[:headerSize+nonceSize]), ct[headerSize:headerSize+nonceSize], pt, fieldAADFor(ct[:headerSize], sB))
	if _, err := k.Open(sB, forged); !errors.Is(err, ErrDecrypt) {
		t.Errorf("tenant B opened a value sealed with tenant A's key: %v", err)
	}
}

func TestFingerprints(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	v := []byte("https://mcp.example.com/mcp")
	fp := k.Fingerprint("t1", "server_url", v)
	if !strings.HasPrefix(fp, "k1:") || len(fp) != len("k1:")+64 {
		t.Errorf("Fingerprint = %q, want k1: and 64 hex digits", fp)
	}
	if fp != k.Fingerprint("t1", "server_url", v) {
		t.Error("Fingerprint is not deterministic")
	}
	if fps := k.Fingerprints("t1", "server_url", v); !slices.Equal(fps, []string{fp}) {
		t.Errorf("Fingerprints = %v, want [%s]", fps, fp)
	}
	distinct := map[string]string{
		"base":               fp,
		"other tenant":       k.Fingerprint("t2", "server_url", v),
		"other purpose":      k.Fingerprint("t1", "header", v),
		"other value":        k.Fingerprint("t1", "server_url", []byte("https://mcp.example.com/mc")),
		"shifted boundary":   k.Fingerprint("t1s", "erver_url", v),
		"other key":          mustParse(t, "1:"+base64.StdEncoding.EncodeToString(keyB)).Fingerprint("t1", "server_url", v),
		"short fingerprint":  k.ShortFingerprint("t1", "server_url", v),
		"short other tenant": k.ShortFingerprint("t2", "server_url", v),
	}
	seen := map[string]string{}
	for name, f := range distinct {
		if prev, ok := seen[f]; ok {
			t.Errorf("%s and %s share fingerprint %q", name, prev, f)
		}
		seen[f] = name
	}

	short := k.ShortFingerprint("t1", "server_url", v)
	if len(short) != 8 || strings.Trim(short, "0123456789abcdef") != "" {
		t.Errorf("ShortFingerprint = %q, want 8 hex digits", short)
	}
	// The short fingerprint is not a prefix of the full one (separate key)
	// nor of an unkeyed SHA-256.
	if strings.HasPrefix(strings.TrimPrefix(fp, "k1:"), short) {
		t.Error("ShortFingerprint is a prefix of Fingerprint")
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	b64 := base64.StdEncoding.EncodeToString
	rawURL := base64.RawURLEncoding.EncodeToString
	key16 := bytes.Repeat([]byte{0xD4}, 16)
	key33 := bytes.Repeat([]byte{0xE5}, 33)
	tests := []struct {
		name    string
		spec    string
		primary uint32
		ids     []uint32
		wantErr string
	}{
		{name: "one key", spec: specA, primary: 1, ids: []uint32{1}},
		{name: "raw url base64", spec: "7:" + rawURL(keyB), primary: 7, ids: []uint32{7}},
		{name: "primary first not sorted", spec: specBA, primary: 2, ids: []uint32{1, 2}},
		{name: "spaces", spec: " 2:" + b64(keyB) + " , 1: " + b64(keyA) + "\n", primary: 2, ids: []uint32{1, 2}},
		{name: "max id", spec: "4294967295:" + b64(keyA), primary: 4294967295, ids: []uint32{4294967295}},

		{name: "empty", spec: "", wantErr: "empty"},
		{name: "blank", spec: "  \n", wantErr: "empty"},
		{name: "empty entry", spec: specA + ",", wantErr: "entry 2 is empty"},
		{name: "no colon", spec: b64(keyA), wantErr: "entry 1 is not ID:BASE64KEY"},
		{name: "bad base64", spec: "1:" + b64(keyA)[:40] + "!!!!", wantErr: "not valid base64"},
		{name: "16-byte key", spec: "1:" + b64(key16), wantErr: "key is 16 bytes, want 32"},
		{name: "33-byte key", spec: "1:" + b64(key33), wantErr: "key is 33 bytes, want 32"},
		{name: "empty key", spec: "1:", wantErr: "key is empty"},
		{name: "duplicate id", spec: specA + ",1:" + b64(keyB), wantErr: "duplicate key id 1"},
		{name: "duplicate id leading zero", spec: specA + ",01:" + b64(keyB), wantErr: "duplicate key id 1"},
		{name: "id zero", spec: "0:" + b64(keyA), wantErr: "positive"},
		{name: "negative id", spec: "-1:" + b64(keyA), wantErr: "positive"},
		{name: "id too large", spec: "4294967296:" + b64(keyA), wantErr: "positive"},
		{name: "key and id swapped", spec: b64(keyA) + ":1", wantErr: "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := Parse(tt.spec)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				assertNoKeyMaterial(t, err.Error(), tt.spec)
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if k.PrimaryID() != tt.primary {
				t.Errorf("PrimaryID = %d, want %d", k.PrimaryID(), tt.primary)
			}
			if !slices.Equal(k.IDs(), tt.ids) {
				t.Errorf("IDs = %v, want %v", k.IDs(), tt.ids)
			}
			for _, out := range []string{k.String(), fmt.Sprintf("%v %+v %#v %s", k, k, k, k)} {
				assertNoKeyMaterial(t, out, tt.spec)
			}
		})
	}
}

// assertNoKeyMaterial fails if text contains any run of 6 characters (not all
// digits) taken from the key part of a spec entry, from a non-numeric id part
// or from an entry without a colon, as written or base64-decoded (raw or
// hex).
func assertNoKeyMaterial(tb testing.TB, text, spec string) {
	tb.Helper()
	const run = 6
	for _, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		secret := entry
		if _, after, ok := strings.Cut(entry, ":"); ok {
			secret = strings.TrimSpace(after)
		}
		candidates := []string{secret}
		// An id that is not a number may be a key written the wrong way round.
		if id, _, ok := strings.Cut(entry, ":"); ok && strings.Trim(strings.TrimSpace(id), "0123456789") != "" {
			candidates = append(candidates, id)
		}
		for _, c := range slices.Clone(candidates) {
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
				if b, err := enc.DecodeString(strings.TrimSpace(c)); err == nil {
					candidates = append(candidates, fmt.Sprintf("%x", b), string(b))
				}
			}
		}
		for _, c := range candidates {
			for i := 0; i+run <= len(c); i++ {
				// Runs of digits are skipped: messages legitimately carry
				// numbers (entry positions, ids, lengths), which FuzzParse
				// checks separately by matching message templates.
				if strings.Trim(c[i:i+run], "0123456789") == "" {
					continue
				}
				if strings.Contains(text, c[i:i+run]) {
					tb.Errorf("%q contains key material %q", text, c[i:i+run])
					return
				}
			}
		}
	}
}

func TestIDsIsACopy(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specBA)
	ids := k.IDs()
	ids[0] = 99
	if k.IDs()[0] != 1 {
		t.Fatal("IDs exposes internal state")
	}
}

func TestGenerateSpec(t *testing.T) {
	t.Parallel()
	spec, err := GenerateSpec(5)
	if err != nil {
		t.Fatal(err)
	}
	k := mustParse(t, spec)
	if k.PrimaryID() != 5 {
		t.Errorf("PrimaryID = %d, want 5", k.PrimaryID())
	}
	other, err := GenerateSpec(5)
	if err != nil {
		t.Fatal(err)
	}
	if other == spec {
		t.Error("GenerateSpec returned the same key twice")
	}
	if _, err := GenerateSpec(0); err == nil {
		t.Error("GenerateSpec(0) succeeded")
	}
}

func TestLoadOrCreateFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "data", "keys", "master.key")
	spec, created, err := LoadOrCreateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Error("created = false for a new file")
	}
	k := mustParse(t, spec)
	if k.PrimaryID() != 1 {
		t.Errorf("PrimaryID = %d, want 1", k.PrimaryID())
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("file mode = %o, want 600", mode)
		}
		di, err := os.Stat(filepath.Dir(path))
		if err != nil {
			t.Fatal(err)
		}
		if mode := di.Mode().Perm(); mode != 0o700 {
			t.Errorf("directory mode = %o, want 700", mode)
		}
	}
	again, created, err := LoadOrCreateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if created || again != spec {
		t.Errorf("reload = %q, created=%v; want the same spec, created=false", again, created)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the key file", len(entries))
	}
}

func TestLoadOrCreateFileExisting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	if err := os.WriteFile(path, []byte("\n  "+specBA+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec, created, err := LoadOrCreateFile(path)
	if err != nil || created || spec != specBA {
		t.Errorf("LoadOrCreateFile = %q, %v, %v; want the trimmed spec", spec, created, err)
	}

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateFile(empty); err == nil {
		t.Error("empty key file accepted")
	}
}

func TestLoadOrCreateFileConcurrent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "k")
	const n = 8
	specs := make([]string, n)
	createdCount := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, c, err := LoadOrCreateFile(path)
			if err != nil {
				t.Error(err)
			}
			specs[i], createdCount[i] = s, c
		})
	}
	wg.Wait()
	creators := 0
	for i := range n {
		if createdCount[i] {
			creators++
		}
		if specs[i] != specs[0] {
			t.Errorf("caller %d got a different spec", i)
		}
	}
	if creators != 1 {
		t.Errorf("%d callers report creating the file, want 1", creators)
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specBA)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			s := Scope{Tenant: fmt.Sprintf("t%d", g%4), Provider: "p", Field: "f"}
			for i := range 50 {
				pt := []byte(fmt.Sprintf("v%d-%d", g, i))
				ct, err := k.Seal(s, pt)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := k.Open(s, ct)
				if err != nil || !bytes.Equal(got, pt) {
					t.Errorf("Open = %q, %v", got, err)
					return
				}
				_ = k.Fingerprints(s.Tenant, "url", pt)
			}
		})
	}
	wg.Wait()
}

func TestCacheIsBounded(t *testing.T) {
	t.Parallel()
	k := mustParse(t, specA)
	var first []byte
	for i := range maxCached + 10 {
		s := Scope{Tenant: fmt.Sprintf("t%d", i), Field: "f"}
		ct := mustSeal(t, k, s, []byte("v"))
		if i == 0 {
			first = ct
		}
		_ = k.ShortFingerprint(s.Tenant, "header", []byte("v"))
	}
	for name, n := range map[string]int64{"aead": k.nAEADs.Load(), "mac": k.nMACs.Load()} {
		if n > maxCached {
			t.Errorf("%s cache holds %d entries, want at most %d", name, n, maxCached)
		}
	}
	// An evicted tenant's key is derived again, identically.
	if pt, err := k.Open(Scope{Tenant: "t0", Field: "f"}, first); err != nil || string(pt) != "v" {
		t.Fatalf("Open after eviction = %q, %v", pt, err)
	}
}

// TestCheckValue: the check value is stable for one key, differs between
// two keys under the same id, is separate from fingerprints, and contains
// no key material.
func TestCheckValue(t *testing.T) {
	t.Parallel()
	a := mustParse(t, specA)
	a2 := mustParse(t, specBA)
	other := mustParse(t, "1:"+base64.StdEncoding.EncodeToString(keyC))
	va, ok := a.CheckValue(1)
	if !ok || len(va) != 32 {
		t.Fatalf("CheckValue(1) = %q, %v; want 32 hex digits", va, ok)
	}
	if v, _ := a2.CheckValue(1); v != va {
		t.Errorf("same key in another keyring: %q, want %q", v, va)
	}
	if v, _ := other.CheckValue(1); v == va {
		t.Error("another key under id 1 has the same check value")
	}
	if vb, _ := a2.CheckValue(2); vb == va {
		t.Error("keys 1 and 2 share a check value")
	}
	if _, ok := a.CheckValue(2); ok {
		t.Error("CheckValue of a missing id reported ok")
	}
	for _, enc := range []string{hexString(keyA), base64.StdEncoding.EncodeToString(keyA)} {
		if strings.Contains(enc, va) || strings.Contains(va, enc[:16]) {
			t.Error("check value contains key material")
		}
	}
	if strings.Contains(a.Fingerprint("", "", []byte(checkMessage)), va) {
		t.Error("check value equals a fingerprint")
	}
}

func hexString(b []byte) string { return fmt.Sprintf("%x", b) }
