// The protoc plugins buf.gen.yaml runs, pinned apart from buf so they can sit
// on the tagged protobuf and grpc-gateway releases the service's go.mod uses
// (.ci/run checks the versions are equal). Update them together with the
// service: GOWORK=off go get -tool google.golang.org/protobuf/cmd/protoc-gen-go@vX.Y.Z
// from this directory, then scripts/gen.sh and commit gen/.
module github.com/mcpauth/mcpauth/tools/protoc

go 1.26.8

tool (
	github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway
	github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
	google.golang.org/protobuf/cmd/protoc-gen-go
)

require (
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.33.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20261026165753-2ffab32bce7e // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
	google.golang.org/grpc v1.84.0 // indirect
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
