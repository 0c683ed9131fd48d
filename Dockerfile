# One image per function, all from this file:
#
#   docker build --build-arg FUNCTION=signup \
#     -t ghcr.io/finapp/finapp-functions/signup:latest .
#
# FUNCTION is a binary name, which is also the folder name under functions/
# (signup, login, ..., notify-consumer). Needs BuildKit (the default builder
# since Docker 23) for the cache mounts.

# Same Debian release as the runtime image below, so the glibc the binary was
# linked against is the one it runs with.
FROM rust:1.95-bookworm AS build
ARG FUNCTION
WORKDIR /src
COPY . .
# The cache mounts keep crates.io downloads and compiled dependencies between
# builds of different functions; the binary is copied out of the cached
# target/ because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    test -n "${FUNCTION}" \
    && test -d "functions/${FUNCTION}" \
    && cargo build --release --locked --bin "${FUNCTION}" \
    && cp "target/release/${FUNCTION}" /function

# The binaries link glibc and libgcc_s dynamically (TLS is rustls, so no
# OpenSSL), which is what the distroless "cc" image holds: no shell, no
# package manager, no compiler; CA certificates and tzdata are included.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG FUNCTION
LABEL org.opencontainers.image.title="finapp-${FUNCTION}" \
      org.opencontainers.image.description="FinApp function ${FUNCTION}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /function /usr/local/bin/finapp-function
# 65532 is the image's "nonroot" user. Numeric on purpose: with a user name,
# Kubernetes' runAsNonRoot cannot prove the user is not root unless the pod
# also sets runAsUser.
USER 65532:65532
# Without AWS_LAMBDA_RUNTIME_API (set only by Lambda) the HTTP functions serve
# plain HTTP on PORT with GET /healthz; notify-consumer ignores PORT.
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/finapp-function"]
