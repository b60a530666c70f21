package keyring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to KeyID and Open. Nothing may panic, and
// the only inputs that may decrypt are the genuine ciphertexts in the seed
// corpus: any other input must be rejected with ErrDecrypt or ErrUnknownKey.
func FuzzOpen(f *testing.F) {
	k := mustParse(f, specBA)
	// The genuine ciphertexts use fixed nonces: fuzzing workers rerun this
	// setup, and must agree with the coordinator on which inputs are genuine.
	genuine := [][]byte{
		sealWithNonce(f, k, 2, scope, bytes.Repeat([]byte{1}, nonceSize), []byte("tok")),
		sealWithNonce(f, k, 2, scope, bytes.Repeat([]byte{2}, nonceSize), nil),
		sealWithNonce(f, k, 1, scope, bytes.Repeat([]byte{3}, nonceSize), []byte("old key")),
	}
	for _, ct := range genuine {
		f.Add(ct)
		f.Add(ct[:len(ct)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{version})
	f.Add([]byte{version, 0, 0, 0, 9})
	f.Add(make([]byte, minSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		id, idErr := KeyID(data)
		pt, err := k.Open(scope, data)
		if err == nil {
			if !slices.ContainsFunc(genuine, func(g []byte) bool { return bytes.Equal(g, data) }) {
				t.Fatalf("forged input decrypted to %q", pt)
			}
			if idErr != nil || !k.Has(id) {
				t.Fatalf("decrypted but KeyID = %d, %v", id, idErr)
			}
			return
		}
		if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		if pt != nil {
			t.Fatalf("plaintext returned with error: %q", pt)
		}
		if idErr != nil && !errors.Is(err, ErrDecrypt) {
			t.Fatalf("KeyID rejected the input (%v) but Open said %v", idErr, err)
		}
	})
}

var digits = regexp.MustCompile(`[0-9]+`)

var parseErrorTemplates = map[string]bool{
	"keyring: empty key spec":                                        true,
	"keyring: key spec entry N is empty":                             true,
	"keyring: key spec entry N is not ID:BASENKEY":                   true,
	"keyring: key spec entry N: id must be a positive N-bit integer": true,
	"keyring: key spec entry N: duplicate key id N":                  true,
	"keyring: key spec entry N (id N): key is empty":                 true,
	"keyring: key spec entry N (id N): key is not valid baseN":       true,
	"keyring: key spec entry N (id N): key is N bytes, want N":       true,
}

// FuzzParse feeds arbitrary specs to Parse. Nothing may panic; errors never
// echo key material; a spec that parses yields a working keyring whose ids
// match its entries.
func FuzzParse(f *testing.F) {
	f.Add(specA)
	f.Add(specBA)
	f.Add(specA + "," + specA)
	f.Add("0:" + strings.Repeat("A", 43))
	f.Add("1:" + strings.Repeat("A", 43))
	f.Add("1:" + strings.Repeat("_", 43))
	f.Add("1:" + strings.Repeat("A", 22) + "==")
	f.Add(" , ")
	f.Add(":")
	f.Fuzz(func(t *testing.T, spec string) {
		k, err := Parse(spec)
		if err != nil {
			if k != nil {
				t.Fatal("keyring returned with an error")
			}
			assertNoKeyMaterial(t, err.Error(), spec)
			// Beyond numbers, a message is fixed text: nothing of the input
			// can be echoed.
			if msg := digits.ReplaceAllString(err.Error(), "N"); !parseErrorTemplates[msg] {
				t.Fatalf("unexpected error text %q", err)
			}
			return
		}
		entries := strings.Split(strings.TrimSpace(spec), ",")
		ids := k.IDs()
		if len(ids) != len(entries) || !slices.IsSorted(ids) || !k.Has(k.PrimaryID()) || k.PrimaryID() == 0 {
			t.Fatalf("inconsistent keyring %v for %d entries", k, len(entries))
		}
		for _, id := range ids {
			if len(k.keys[id]) != keySize {
				t.Fatalf("key %d is %d bytes", id, len(k.keys[id]))
			}
		}
		ct, err := k.Seal(scope, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := k.Open(scope, ct); err != nil || string(pt) != "x" {
			t.Fatalf("round trip = %q, %v", pt, err)
		}
		assertNoKeyMaterial(t, k.String(), spec)
	})
}

// sealWithNonce is Seal with a chosen key and nonce, for reproducible
// ciphertexts in tests only.
func sealWithNonce(tb testing.TB, k *Keyring, id uint32, s Scope, nonce, plaintext []byte) []byte {
	tb.Helper()
	aead, err := k.aead(id, s.Tenant)
	if err != nil {
		tb.Fatal(err)
	}
	out := []byte{version, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], id)
	out = append(out, nonce...)
	ct := aead.Seal(out, nonce, plaintext, fieldAADFor(out[:headerSize], s))
	if pt, err := k.Open(s, ct); err != nil || !bytes.Equal(pt, plaintext) {
		tb.Fatalf("sealWithNonce produced a ciphertext Open rejects: %v", err)
	}
	return ct
}
