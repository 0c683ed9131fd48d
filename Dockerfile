# One image per function, built from a static binary made beforehand:
#
#   scripts/build-image.sh signup     # cargo build (musl) + this file, with podman/buildah
#
# The build context is the folder build-image.sh prepares, holding exactly:
#   function               target/x86_64-unknown-linux-musl/release/<FUNCTION>
#   ca-certificates.crt    Debian's CA bundle (ca-certificates)
# No build stage: a compiler image would have to come from a registry, and the
# same binary is built by cargo on the machine or the CI runner either way, so
# a local build and CI's are the same build. The binary is static (musl), so the
# image needs no libc: nothing but the binary and the CA bundle (for TLS to
# MongoDB, RabbitMQ and AWS), no shell, no package manager.
FROM scratch
ARG FUNCTION
LABEL org.opencontainers.image.title="finapp-${FUNCTION}" \
      org.opencontainers.image.description="FinApp function ${FUNCTION}" \
      org.opencontainers.image.licenses="MIT"
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY function /usr/local/bin/finapp-function
# Numeric on purpose: with a user name, Kubernetes' runAsNonRoot cannot prove
# the user is not root unless the pod also sets runAsUser. scratch has no
# /etc/passwd, and the functions need none.
USER 65532:65532
# Without AWS_LAMBDA_RUNTIME_API (set only by Lambda) the HTTP functions serve
# plain HTTP on PORT with GET /healthz; notify-consumer ignores PORT. Every
# function, notify-consumer too, serves GET /metrics on METRICS_PORT (9464 by
# default; docs/operations.md).
ENV PORT=8080 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/finapp-function"]
