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
