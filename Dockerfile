FROM golang:1.26 AS build
# The binary is built from the service's go.mod alone: go.work would pull in
# the e2e module and its test-only dependencies.
ENV GOWORK=off
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# docker build --build-arg VERSION=$(git describe --tags --always) stamps the
# version /healthz and "mcpauthd version" report (.git is not in the context).
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/mcpauth/mcpauth/version.stamped=${VERSION}" -o /mcpauthd ./cmd/mcpauthd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /mcpauthd /mcpauthd
USER nonroot
EXPOSE 9090 8080
ENTRYPOINT ["/mcpauthd"]
