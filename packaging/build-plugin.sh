#!/usr/bin/env bash
# Builds the vaultbridge managed plugin and creates it in the local engine —
# one command, offline:
#
#   packaging/build-plugin.sh --enable
#
# Options:
#   --binary PATH   use this static vaultbridge binary (default: build one here
#                   with cargo, statically linked, the default features)
#   --dockerfile    build the rootfs with the Dockerfile instead (needs access
#                   to Docker Hub and crates.io)
#   --name NAME     plugin name (default vaultbridge); may be a registry
#                   reference, e.g. registry.example.com/ops/vaultbridge
#   --tag TAG       plugin tag (default: the crate version)
#   --dir DIR       where to lay out config.json + rootfs/ (default: a temporary
#                   directory, removed afterwards)
#   --set K=V       `docker plugin set` before enabling (repeatable), e.g.
#                   --set config.source=/etc/vaultbridge
#   --enable        enable the plugin after creating it
#   --replace       remove an existing plugin of the same name:tag first
#
# Prints the plugin's name:tag on its last line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

binary=""
use_dockerfile=false
name=vaultbridge
tag=""
dir=""
sets=()
enable=false
replace=false

die() {
  echo "build-plugin: $*" >&2
  exit 1
}

while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --dockerfile) use_dockerfile=true; shift ;;
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --dir) dir=${2:?--dir needs a path}; shift 2 ;;
    --set) sets+=("${2:?--set needs K=V}"); shift 2 ;;
    --enable) enable=true; shift ;;
    --replace) replace=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

if [[ -z $tag ]]; then
  tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
  [[ -n $tag ]] || die "cannot read the version from Cargo.toml; pass --tag"
fi
plugin="$name:$tag"

if [[ -z $dir ]]; then
  dir=$(mktemp -d -t vaultbridge-plugin.XXXXXX)
  trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"

if $use_dockerfile; then
  [[ -z $binary ]] || die "--binary and --dockerfile exclude each other"
  image="vaultbridge-rootfs:$tag"
  echo "build-plugin: docker build -t $image $repo" >&2
  # --force-rm: no stopped build containers left behind when a step fails.
  # The build stage stays in Docker's cache for the next build (reclaim the
  # space with `docker image prune`).
  docker build --force-rm -t "$image" "$repo" >&2
  container=$(docker create "$image")
  rm -rf "$dir/rootfs"
  mkdir -p "$dir/rootfs"
  docker export "$container" | tar -x -C "$dir/rootfs"
  docker rm -f "$container" >/dev/null
  # `docker export` adds the container's init layer; drop it so the tree is
  # exactly what packaging/rootfs.sh laid out in the image.
  rm -f "$dir/rootfs/.dockerenv" "$dir/rootfs/etc/hostname" "$dir/rootfs/etc/mtab" \
    "$dir/rootfs/dev/console"
  rmdir "$dir/rootfs/dev/pts" "$dir/rootfs/dev/shm" 2>/dev/null || true
  chmod 0644 "$dir/rootfs/etc/hosts" "$dir/rootfs/etc/resolv.conf"
  docker image rm "$image" >/dev/null
else
  if [[ -z $binary ]]; then
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    echo "build-plugin: building the static binary with cargo" >&2
    (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release \
      --target x86_64-unknown-linux-gnu -p vaultbridge >&2)
    binary="$target_dir/x86_64-unknown-linux-gnu/release/vaultbridge"
  fi
  "$repo/packaging/rootfs.sh" "$binary" "$dir"
fi
cp "$repo/config.json" "$dir/config.json"
# Which build this is. It also makes every name:tag's rootfs distinct: the
# engine refuses to create a plugin whose rootfs is byte-identical to an
# installed one ("content sha256:... already exists").
echo "$plugin" >"$dir/rootfs/etc/vaultbridge-release"

if docker plugin inspect "$plugin" >/dev/null 2>&1; then
  $replace || die "plugin $plugin already exists; remove it (docker plugin disable -f $plugin && docker plugin rm $plugin) or pass --replace"
  docker plugin disable -f "$plugin" >/dev/null 2>&1 || true
  docker plugin rm -f "$plugin" >/dev/null
fi
echo "build-plugin: docker plugin create $plugin $dir" >&2
docker plugin create "$plugin" "$dir" >/dev/null
for kv in "${sets[@]}"; do
  docker plugin set "$plugin" "$kv"
done
if $enable; then
  echo "build-plugin: docker plugin enable $plugin" >&2
  if ! docker plugin enable "$plugin" >&2; then
    echo "build-plugin: $plugin was created but did not start; its own error is in the" >&2
    echo "  engine's log (lines tagged plugin=$(docker plugin inspect -f '{{.Id}}' "$plugin"))." >&2
    echo "  Configure it (docker plugin set $plugin config.source=/etc/vaultbridge ...) and run" >&2
    echo "  docker plugin enable $plugin" >&2
    exit 1
  fi
fi
echo "$plugin"
