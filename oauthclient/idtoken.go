package oauthclient

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcpauth/mcpauth/secret"
)

// ErrIDTokenSubject is CheckIDToken's answer for a valid ID token that
// names another subject than the expected one.
var ErrIDTokenSubject = errors.New("the ID token names another subject")

// idTokenAlgs are the JWS algorithms an ID token may be signed with (the
// signature itself is not checked; see CheckIDToken).
var idTokenAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

// CheckIDToken checks the ID token of a code exchange and that it names
// subject (OpenID Connect Core 1.0 section 3.1.3.7): iss is the issuer the
// flow used (exact compare), aud holds the client id, and when aud holds
// other audiences azp is the client id; exp is in the future (with a
// minute of leeway for clock skew); sub equals subject. The token came
// straight from the token endpoint the flow's validated metadata names, so
// TLS authenticates its origin and, as section 3.1.3.7 step 6 allows for
// this case, the signature is not checked. An error never quotes the token
// or its claims.
func CheckIDToken(idToken secret.Secret, issuer, clientID, subject string, now time.Time) error {
	if idToken.IsZero() {
		return errors.New("id token: none in the token response")
	}
	if len(idToken.Reveal()) > 16<<10 {
		return errors.New("id token: larger than 16 KiB")
	}
	parsed, err := jwt.ParseSigned(idToken.Reveal(), idTokenAlgs)
	if err != nil {
		return errors.New("id token: not a signed JWT")
	}
	var c struct {
		jwt.Claims
		AuthorizedParty string `json:"azp"`
	}
	if err := parsed.UnsafeClaimsWithoutVerification(&c); err != nil {
		return errors.New("id token: claims do not parse")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{clientID}, Time: now}, time.Minute); err != nil {
		return fmt.Errorf("id token: %w", err)
	}
	if c.Expiry == nil {
		return errors.New("id token: no exp")
	}
	if len(c.Audience) > 1 && c.AuthorizedParty != clientID {
		return errors.New("id token: several audiences and azp is not the client")
	}
	if c.Subject == "" || c.Subject != subject {
		return ErrIDTokenSubject
	}
	return nil
}

// IDTokenClaims are the claims of an ID token read without checking its
// signature: what it says, not yet what anyone vouched for.
type IDTokenClaims struct {
	// Issuer and Subject are iss and sub (OpenID Connect Core 1.0 section
	// 2): together, the end user's identity.
	Issuer, Subject string
	// All holds every claim as JSON decodes it.
	All map[string]any
}

// ReadIDTokenUnverified reads the claims of an ID token (a JWS in compact
// serialisation with one of the algorithms ID tokens are signed with)
// without checking its signature. It is for a token about to be sent to
// its issuer, which validates it: what the claims say may decide to send
// nothing, never to trust the token. iss and sub are required (OpenID
// Connect Core 1.0 section 2), sub at most 255 ASCII characters; an error
// never quotes the token or its claims.
func ReadIDTokenUnverified(idToken secret.Secret) (*IDTokenClaims, error) {
	// OpenID Connect Core 1.0 section 10.1 also lets a provider sign ID
	// tokens with the client secret (HS256...): harmless here, where no
	// signature is checked.
	parsed, err := jwt.ParseSigned(idToken.Reveal(), append([]jose.SignatureAlgorithm{jose.HS256, jose.HS384, jose.HS512}, idTokenAlgs...))
	if err != nil {
		return nil, errors.New("not a signed JWT with an ID token algorithm")
	}
	all := map[string]any{}
	if err := parsed.UnsafeClaimsWithoutVerification(&all); err != nil {
		return nil, errors.New("claims do not parse")
	}
	iss, _ := all["iss"].(string)
	sub, _ := all["sub"].(string)
	switch {
	case iss == "" || sub == "":
		return nil, errors.New("iss and sub claims are required")
	case len(sub) > 255 || !printableASCII(sub):
		return nil, errors.New("sub must be at most 255 printable ASCII characters")
	case len(iss) > 2048 || !printableASCII(iss):
		return nil, errors.New("iss must be at most 2048 printable ASCII characters")
	}
	return &IDTokenClaims{Issuer: iss, Subject: sub, All: all}, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
