# mcpauthd container image: a static binary on distroless, running as the
# unprivileged user 65532 (distroless "nonroot").
#   docker build -t mcpauth .
# .dockerignore keeps .git, data directories, keys, databases and the other
# modules (e2e/, tools/, deploy/) out of the build context.

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
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/mcpauth/mcpauth/version.stamped=${VERSION}" -o /out/mcpauthd ./cmd/mcpauthd
# The data directory (SQLite file, development master key, generated admin
# key), owned by the user the image runs as. Docker fills an empty named
# volume from the image's directory at its mount point, ownership included,
# so a fresh volume at /data is writable by 65532 too. A bind mount is not
# filled: chown it to 65532 on the host (mcpauthd says so if it cannot write).
RUN mkdir -p /out/rootfs/data && chmod 0700 /out/rootfs/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mcpauthd /mcpauthd
COPY --from=build --chown=65532:65532 /out/rootfs/ /
USER 65532:65532
ENV MCPAUTH_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 9090 8080
# Probes /readyz on the local HTTP port (database and Redis reachable).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/mcpauthd", "healthcheck"]
ENTRYPOINT ["/mcpauthd"]
