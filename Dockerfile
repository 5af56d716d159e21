# wsproxy container image: a static binary on a minimal base, run as an
# unprivileged user. The configuration is read from /etc/wsproxy/config.yaml
# (mount a file or a ConfigMap there).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/wsproxy ./cmd/wsproxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsproxy /usr/local/bin/wsproxy
COPY config.example.yaml /etc/wsproxy/config.yaml
ENV WSPROXY_CONFIG=/etc/wsproxy/config.yaml
USER 65532:65532
EXPOSE 8080 9090
# SIGTERM drains WebSocket sessions (up to drain_timeout) before exiting.
STOPSIGNAL SIGTERM
# The admin listener must be reachable on 127.0.0.1:9090 inside the container.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["/usr/local/bin/wsproxy", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/wsproxy"]
