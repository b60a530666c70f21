package validate

import (
	"bytes"
	"encoding/base64"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mcpauth/mcpauth/apperr"
)

// MaxIconSymbolRunes bounds an icon given as a symbol rather than a URL.
const MaxIconSymbolRunes = 16

// iconImageTypes are the raster types a data: icon may declare, with the
// leading bytes its payload must start with. SVG is left out on purpose:
// an SVG document can carry script.
var iconImageTypes = map[string][][]byte{
	"image/png":  {[]byte("\x89PNG\r\n\x1a\n")},
	"image/jpeg": {[]byte("\xff\xd8\xff")},
	"image/gif":  {[]byte("GIF87a"), []byte("GIF89a")},
	"image/webp": {[]byte("RIFF")},
}

// Icon checks an optional icon shown by consoles. Consoles render it as an
// image source or as text, so only forms that cannot run script there are
// accepted, each at most 2048 bytes of valid UTF-8 without control
// characters:
//   - empty (no icon);
//   - an https URL checked as ServerURL checks URLs (a valid host, no
//     userinfo, no fragment, no spaces, no backslash);
//   - a data URL "data:image/{png,jpeg,gif,webp};base64,..." whose payload
//     is valid base64 and starts as the declared format does (no SVG, no
//     other media type);
//   - a symbol such as an emoji or a letter: 1 to 16 characters without
//     spaces and without ASCII punctuation, so it can be no URL at all.
//
// Every other scheme (javascript:, http:, data:text/html, data:image/svg+xml,
// vbscript:, file:...) is refused, in any letter case.
func Icon(field, s string) error {
	switch {
	case s == "":
		return nil
	case len(s) > MaxIconBytes:
		return apperr.Invalid(field, "must be at most %d bytes", MaxIconBytes)
	case !utf8.ValidString(s):
		return apperr.Invalid(field, "must be valid UTF-8")
	case strings.IndexFunc(s, unsafeRune) >= 0:
		return apperr.Invalid(field, "must not contain control characters")
	}
	if len(s) >= 5 && strings.EqualFold(s[:5], "data:") {
		return dataIcon(field, s)
	}
	if strings.ContainsAny(s, `:/\`) {
		return httpsIcon(field, s)
	}
	return symbolIcon(field, s)
}

func httpsIcon(field, s string) error {
	u, err := parseBrowserURL(field, s)
	if err != nil {
		return err
	}
	if !strings.EqualFold(u.Scheme, "https") {
		return apperr.Invalid(field, "must be an https URL, a data:image URL or a symbol")
	}
	if err := authority(field, u); err != nil {
		return err
	}
	if strings.Contains(s, "#") {
		return apperr.Invalid(field, "must not contain a fragment")
	}
	return nil
}

func dataIcon(field, s string) error {
	meta, payload, ok := strings.Cut(s[len("data:"):], ",")
	mediaType, b64 := strings.CutSuffix(strings.ToLower(meta), ";base64")
	magic, known := iconImageTypes[mediaType]
	if !ok || !b64 || !known {
		return apperr.Invalid(field, "a data URL must be data:image/png, jpeg, gif or webp with ;base64")
	}
	raw, err := base64.StdEncoding.DecodeString(payload)
	if err != nil || len(raw) == 0 {
		return apperr.Invalid(field, "a data URL must carry non-empty standard base64")
	}
	for _, m := range magic {
		if bytes.HasPrefix(raw, m) && (mediaType != "image/webp" || len(raw) >= 12 && string(raw[8:12]) == "WEBP") {
			return nil
		}
	}
	return apperr.Invalid(field, "the data URL's content is not the declared image type")
}

func symbolIcon(field, s string) error {
	if utf8.RuneCountInString(s) > MaxIconSymbolRunes {
		return apperr.Invalid(field, "a symbol must be at most %d characters (use an https URL for anything longer)", MaxIconSymbolRunes)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || r < utf8.RuneSelf && !isAlnum(byte(r)) {
			return apperr.Invalid(field, "a symbol must not contain spaces or ASCII punctuation")
		}
	}
	return nil
}
