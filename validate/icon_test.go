package validate

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
)

func dataURL(mediaType string, payload []byte) string {
	return "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(payload)
}

var (
	pngBytes  = []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
	webpBytes = []byte("RIFF\x10\x00\x00\x00WEBPVP8 ")
)

// TestIcon covers the forms an icon may take and every way a console
// rendering it could be made to run script or leak a credential.
func TestIcon(t *testing.T) {
	t.Parallel()
	const f = "provider.icon"
	tests := []struct {
		name, in, wantMsg string
	}{
		{"empty", "", ""},
		{"https url", "https://example.com/icon.png", ""},
		{"https in capitals", "HTTPS://EXAMPLE.COM/icon.png", ""},
		{"https with query", "https://example.com/i?s=32", ""},
		{"emoji", "🔧", ""},
		{"emoji sequence", "👩‍💻", ""},
		{"letter", "L", ""},
		{"png data", dataURL("image/png", pngBytes), ""},
		{"jpeg data", dataURL("image/jpeg", []byte("\xff\xd8\xff\xe0JFIF")), ""},
		{"gif data", dataURL("image/gif", []byte("GIF89a\x01\x00")), ""},
		{"webp data", dataURL("image/webp", webpBytes), ""},
		{"data in capitals", "DATA:IMAGE/PNG;BASE64," + base64.StdEncoding.EncodeToString(pngBytes), ""},

		{"javascript", "javascript:alert(1)", "must be an https URL"},
		{"javascript in capitals", "JAVASCRIPT:alert(1)", "must be an https URL"},
		{"javascript mixed case", "JaVaScRiPt:alert(document.domain)", "must be an https URL"},
		{"vbscript", "vbscript:msgbox(1)", "must be an https URL"},
		{"http", "http://example.com/icon.png", "must be an https URL"},
		{"protocol relative", "//evil.example/icon.png", "must be an https URL"},
		{"relative path", "/icon.png", "must be an https URL"},
		{"file", "file:///etc/passwd", "must be an https URL"},
		{"userinfo", "https://user:pass@example.com/icon.png", "must not contain userinfo"},
		{"user only", "https://user@example.com/icon.png", "must not contain userinfo"},
		{"no host", "https:///icon.png", "must include a host"},
		{"fragment", "https://example.com/icon.png#x", "must not contain a fragment"},
		{"backslash", `https://example.com\@evil.example/i.png`, "backslash"},
		{"space in url", "https://example.com/a b.png", "spaces or control characters"},
		{"newline", "https://example.com/\nicon.png", "control characters"},
		{"tab", "java\tscript:alert(1)", "control characters"},
		{"nul", "https://example.com/\x00", "control characters"},
		{"bidi override", "https://example.com/\u202egnp.png", "control characters"},
		{"bad utf8", "https://example.com/\xff", "valid UTF-8"},
		{"oversized url", "https://example.com/" + strings.Repeat("a", MaxIconBytes), "at most 2048 bytes"},
		{"oversized data", dataURL("image/png", append(pngBytes, make([]byte, 2048)...)), "at most 2048 bytes"},
		{"oversized symbol", strings.Repeat("a", 2049), "at most 2048 bytes"},

		{"data html", "data:text/html;base64," + base64.StdEncoding.EncodeToString([]byte("<script>alert(1)</script>")), "data:image/png"},
		{"data html plain", "data:text/html,<script>alert(1)</script>", "data:image/png"},
		{"data svg", dataURL("image/svg+xml", []byte(`<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>`)), "data:image/png"},
		{"data svg in capitals", dataURL("IMAGE/SVG+XML", []byte("<svg/>")), "data:image/png"},
		{"data png without base64", "data:image/png,abc", "data:image/png"},
		{"data png with charset", "data:image/png;charset=utf-8;base64," + base64.StdEncoding.EncodeToString(pngBytes), "data:image/png"},
		{"data without comma", "data:image/png;base64", "data:image/png"},
		{"data bad base64", "data:image/png;base64,!!!", "standard base64"},
		{"data empty payload", "data:image/png;base64,", "standard base64"},
		{"data html named png", dataURL("image/png", []byte("<html><script>alert(1)</script>")), "not the declared image type"},
		{"data riff not webp", dataURL("image/webp", []byte("RIFF\x10\x00\x00\x00WAVEfmt ")), "not the declared image type"},

		{"symbol too long", strings.Repeat("é", MaxIconSymbolRunes+1), "at most 16 characters"},
		{"symbol with space", "a b", "spaces"},
		{"symbol with html", "<b>", "ASCII punctuation"},
		{"symbol with quote", `"x`, "ASCII punctuation"},
		{"symbol with ideographic space", "a\u3000b", "spaces"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkErr(t, Icon(f, tt.in), f, tt.wantMsg)
		})
	}
}

// FuzzIcon checks that an accepted icon is empty, a symbol that cannot be
// read as a URL, an https URL without userinfo, or a raster data URL.
func FuzzIcon(f *testing.F) {
	for _, s := range []string{"", "🔧", "L", "https://example.com/i.png", "javascript:alert(1)", " https://a.b/",
		"data:image/png;base64,iVBORw0KGgo=", "data:image/svg+xml;base64,PHN2Zy8+", "https://u@h/", "HTTPS://h/i"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if Icon("f", s) != nil || s == "" {
			return
		}
		lower := strings.ToLower(s)
		switch {
		case strings.HasPrefix(lower, "data:"):
			if !strings.HasPrefix(lower, "data:image/") || strings.Contains(lower, "svg") || !strings.Contains(lower, ";base64,") {
				t.Fatalf("accepted data URL %q", s)
			}
		case strings.ContainsAny(s, `:/\`):
			u, err := url.Parse(s)
			if err != nil || strings.ToLower(u.Scheme) != "https" || u.User != nil || u.Host == "" {
				t.Fatalf("accepted URL %q", s)
			}
		case strings.ContainsAny(s, " <>\"'&"):
			t.Fatalf("accepted symbol %q", s)
		}
	})
}
