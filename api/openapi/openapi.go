// Package openapi holds the OpenAPI v2 document of the REST gateway,
// generated from proto/ by protoc-gen-openapiv2 (scripts/gen.sh; .ci/run
// checks it is current). The gateway serves it at /openapi.json.
package openapi

import _ "embed"

// Document is the merged OpenAPI v2 (Swagger) JSON of every mcpauth.v1
// service.
//
//go:embed mcpauth.swagger.json
var Document []byte
