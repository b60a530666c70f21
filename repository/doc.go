// Package repository is mcpauth's persistence layer: GORM models and the
// queries the service layer needs, on PostgreSQL (production) or an embedded
// SQLite file (zero-setup default).
//
// Tenant scope is structural. Every method that touches tenant data builds its
// query through one helper, scoped, which adds "tenant_id = ?" as an explicit
// SQL condition (never a struct condition, which GORM silently drops for zero
// values) and refuses an empty tenant. The only cross-tenant methods exist for
// key rotation; their names say so (KeyUsage, ...NotUnderKey,
// Rewrite...Ciphertexts) and they never return data to an API caller.
//
// The repository never sees plaintext secrets: ciphertext columns are []byte
// and encryption happens in the service layer. Audit events are append-only:
// no method updates or deletes them.
//
// Errors are apperr kinds: apperr.NotFound for missing rows (the same for
// another tenant's rows), apperr.AlreadyExists with the proto field path for
// uniqueness conflicts, apperr.Aborted for optimistic-lock and
// compare-and-swap mismatches, apperr.Unavailable when the database cannot be
// reached, and apperr.Internal otherwise.
package repository
