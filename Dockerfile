# Tally: a static binary on a distroless base.
# Build: docker build -t tally .   (never built on the development machines, which have no
# Docker engine: see docs/kurrentdb.md for what has and has not been run)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# modernc.org/sqlite is pure Go, so the binary needs no C library. The data directory is made
# owner-only (0700): tally serve refuses one that group or others can enter.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/tally ./cmd/tally \
    && mkdir -p -m 0700 /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tally /usr/local/bin/tally
# A data directory the non-root user owns (store, projection snapshot, RSA key, admin token);
# COPY from a stage keeps its mode 0700, and a new named volume mounted on /data starts as a
# copy of it.
COPY --from=build --chown=nonroot:nonroot /out/data /data
USER nonroot:nonroot
# 8080: the public listener (Cryptolens API, /healthz, /readyz); 8081: the admin listener
# (admin API, /v1, /metrics), to be published on localhost or a private network only.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/tally"]
CMD ["serve", "--data-dir", "/data", "--addr", ":8080", "--admin-addr", ":8081"]
