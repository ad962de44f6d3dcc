#!/usr/bin/env bash
# Builds the rotation controller's image from a static vaultbridge binary:
# the plugin's own root filesystem (packaging/rootfs.sh) on scratch, with
# `vaultbridge rotate` as its entrypoint. No registry or base image needed.
#
#   packaging/rotate/build-image.sh BINARY TAG
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BINARY TAG" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

"$here/../rootfs.sh" "$1" "$context" >/dev/null
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/vaultbridge", "rotate"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$2" "$context" >/dev/null
echo "$2"
