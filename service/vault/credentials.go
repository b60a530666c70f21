package vault

import (
	"encoding/json"

	"github.com/mcpauth/mcpauth/apperr"
	"github.com/mcpauth/mcpauth/domain"
	"github.com/mcpauth/mcpauth/dpop"
	"github.com/mcpauth/mcpauth/oauthclient"
	"github.com/mcpauth/mcpauth/repository"
	"github.com/mcpauth/mcpauth/secret"
)

// FieldCredentialSecrets is the encryption scope field of a provider's
// secret credential material. Changing it makes every stored ciphertext of
// the field unreadable.
const FieldCredentialSecrets = "provider.credential_secrets"

// CredentialSecrets is a provider's secret credential material, in clear.
type CredentialSecrets struct {
	// PrivateKeyPEM is the PKCS#8 PEM key of private_key_jwt, if any.
	PrivateKeyPEM secret.Secret
	// StaticAuthorization is the Authorization header value of a static
	// API-key provider, if any.
	StaticAuthorization secret.Secret
	// DPoPKeyPEM is the PKCS#8 PEM private key of the provider's DPoP key
	// pair (RFC 9449), if any.
	DPoPKeyPEM secret.Secret
	// IdPClientSecret is mcpauth's client secret at the enterprise identity
	// provider of an enterprise-managed provider, if any.
	IdPClientSecret secret.Secret
	// IdPPrivateKeyPEM is the PKCS#8 PEM key mcpauth authenticates with at
	// the enterprise identity provider (private_key_jwt), if any.
	IdPPrivateKeyPEM secret.Secret
}

// IsZero reports whether no secret is held.
func (c CredentialSecrets) IsZero() bool {
	return c.PrivateKeyPEM.IsZero() && c.StaticAuthorization.IsZero() && c.DPoPKeyPEM.IsZero() && c.IdPClientSecret.IsZero() &&
		c.IdPPrivateKeyPEM.IsZero()
}

type credentialBlob struct {
	Key    string `json:"k,omitempty"`
	Static string `json:"s,omitempty"`
	DPoP   string `json:"d,omitempty"`
	IdP    string `json:"i,omitempty"`
	IdPKey string `json:"ik,omitempty"`
}

// SealCredentialSecrets encrypts a provider's secret credential material
// bound to its tenant, provider and field; nil when there is none.
func SealCredentialSecrets(c Cipher, row *repository.Provider, s CredentialSecrets) ([]byte, error) {
	if s.IsZero() {
		return nil, nil
	}
	raw, err := json.Marshal(credentialBlob{Key: s.PrivateKeyPEM.Reveal(), Static: s.StaticAuthorization.Reveal(), DPoP: s.DPoPKeyPEM.Reveal(),
		IdP: s.IdPClientSecret.Reveal(), IdPKey: s.IdPPrivateKeyPEM.Reveal()})
	if err != nil {
		return nil, apperr.Internal(err, "encoding credential secrets")
	}
	ct, err := c.Seal(scope(row, FieldCredentialSecrets), raw)
	if err != nil {
		return nil, apperr.Internal(err, "sealing credential secrets")
	}
	return ct, nil
}

// OpenCredentialSecrets decrypts a provider's secret credential material.
func OpenCredentialSecrets(c Cipher, row *repository.Provider) (CredentialSecrets, error) {
	var out CredentialSecrets
	if len(row.CredentialSecrets) == 0 {
		return out, nil
	}
	raw, err := c.Open(scope(row, FieldCredentialSecrets), row.CredentialSecrets)
	if err != nil {
		return out, apperr.Internal(err, "opening credential secrets")
	}
	var b credentialBlob
	if err := json.Unmarshal(raw, &b); err != nil {
		return out, apperr.Internal(err, "decoding credential secrets")
	}
	return CredentialSecrets{PrivateKeyPEM: secret.New(b.Key), StaticAuthorization: secret.New(b.Static), DPoPKeyPEM: secret.New(b.DPoP),
		IdPClientSecret: secret.New(b.IdP), IdPPrivateKeyPEM: secret.New(b.IdPKey)}, nil
}

// ParseCredentialConfig reads a stored credential configuration.
func ParseCredentialConfig(s string) domain.CredentialConfig {
	var c domain.CredentialConfig
	if s != "" {
		_ = json.Unmarshal([]byte(s), &c)
	}
	return c
}

// JSONCredentialConfig is the stored form of a credential configuration.
func JSONCredentialConfig(c domain.CredentialConfig) string {
	if c == (domain.CredentialConfig{}) {
		return ""
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// openCredentials fills d's credential fields from its row.
func openCredentials(c Cipher, d *Provider) error {
	row := d.Row
	d.Kind = domain.CredentialKind(row.CredentialKind)
	d.CredConfig = ParseCredentialConfig(row.CredentialConfig)
	s, err := OpenCredentialSecrets(c, row)
	if err != nil {
		return err
	}
	d.StaticAuthorization, d.IdPClientSecret = s.StaticAuthorization, s.IdPClientSecret
	if !s.PrivateKeyPEM.IsZero() {
		k, err := oauthclient.ParseClientKey(s.PrivateKeyPEM.Reveal(), d.CredConfig.KeyAlg)
		if err != nil {
			return apperr.Internal(err, "reading the stored client key")
		}
		d.ClientKey = k
	}
	if !s.IdPPrivateKeyPEM.IsZero() {
		k, err := oauthclient.ParseClientKey(s.IdPPrivateKeyPEM.Reveal(), d.CredConfig.IdP.KeyAlg)
		if err != nil {
			return apperr.Internal(err, "reading the stored identity provider client key")
		}
		d.IdPClientKey = k
	}
	if !s.DPoPKeyPEM.IsZero() {
		k, err := dpop.Parse(s.DPoPKeyPEM)
		if err != nil {
			return apperr.Internal(err, "reading the stored DPoP key")
		}
		d.DPoP = k
	}
	return nil
}
