// Package lint lints and renders the mcpauth Helm chart (deploy/helm/mcpauth)
// offline with Helm's own libraries (pkg/lint, and action.Install in
// client-only dry-run mode, as "helm template" does) and checks what the
// rendered manifests promise. It is a module of its own so that Helm's
// dependency tree stays out of the service's go.mod; .ci/run runs its test:
//
//	(cd deploy/helm/lint && GOWORK=off go test ./...)
package lint
