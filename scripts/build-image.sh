#!/usr/bin/env bash
# Builds one function's container image from this repository, without a
# registry or a Docker engine:
#   scripts/build-image.sh [FUNCTION]      (default: signup)
# 1. a static binary: cargo build --release --target x86_64-unknown-linux-musl
# 2. a build context holding that binary and Debian's CA bundle, nothing else
# 3. buildah (Debian's; podman build is the same code) with the Dockerfile, FROM scratch
# The image is $IMAGE_REPO/FUNCTION:$IMAGE_TAG (default
# ghcr.io/finapp/finapp-functions/FUNCTION:latest, the name infra/k8s uses) in
# the local containers storage; the last line gives its size. The release
# workflow runs this same script, then pushes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fn="${1:-signup}"
repo="${IMAGE_REPO:-ghcr.io/finapp/finapp-functions}"
tag="${IMAGE_TAG:-latest}"
target=x86_64-unknown-linux-musl
[ -d "functions/$fn" ] || { echo "no function $fn under functions/" >&2; exit 1; }
source scripts/deploy-tools.sh

cargo build --release --locked --target "$target" --bin "$fn"
binary="target/$target/release/$fn"
# Static, or the image (no libc in it) could not start it.
if file "$binary" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "$binary is dynamically linked" >&2
  exit 1
fi

context="target/image/$fn"
rm -rf "$context"
mkdir -p "$context"
cp "$binary" "$context/function"
cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"

image="$repo/$fn:$tag"
buildah build --quiet --layers=false --build-arg "FUNCTION=$fn" -f Dockerfile -t "$image" "$context" >/dev/null
size="$(podman image inspect --format '{{.Size}}' "$image")"
echo "image $image: $size bytes ($(numfmt --to=iec "$size")), binary $(stat -c %s "$binary") bytes"
