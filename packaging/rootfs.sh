#!/usr/bin/env bash
# Lays out the managed plugin's root filesystem around a static vaultbridge
# binary. The single definition of the layout: the Dockerfile's build stage
# and packaging/build-plugin.sh both run it, so both paths yield the same tree.
#
#   packaging/rootfs.sh BINARY OUT_DIR
#
# /vaultbridge                  the static binary (the manifest's entrypoint)
# /run/docker/plugins/          where it creates vaultbridge.sock
# /etc/vaultbridge/             mount point of the settable `config` mount
# /etc/hosts, /etc/resolv.conf  bind targets (host network: the engine mounts the host's)
# /etc/ssl/certs/ca-certificates.crt  public CAs for TLS to Vault, AWS, Azure
# /tmp                          scratch space, mode 1777
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BINARY OUT_DIR" >&2
  exit 2
fi
binary=$1
out=$2

if [[ ! -x $binary ]]; then
  echo "rootfs: $binary is not an executable file" >&2
  exit 1
fi
# The rootfs has no libc: refuse a dynamically linked binary.
if command -v ldd >/dev/null && ldd "$binary" >/dev/null 2>&1; then
  if ! ldd "$binary" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
    echo "rootfs: $binary is dynamically linked; build it with" >&2
    echo '  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p vaultbridge' >&2
    exit 1
  fi
fi

ca_bundle=""
for candidate in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [[ -f $candidate ]]; then
    ca_bundle=$candidate
    break
  fi
done

mkdir -p "$out"
rm -rf "$out/rootfs"
mkdir -p "$out"/rootfs/{run/docker/plugins,etc/vaultbridge,var/log/vaultbridge,etc/ssl/certs,tmp,dev,proc,sys}
chmod 1777 "$out/rootfs/tmp"
install -m 0755 "$binary" "$out/rootfs/vaultbridge"
: >"$out/rootfs/etc/hosts"
: >"$out/rootfs/etc/resolv.conf"
if [[ -n $ca_bundle ]]; then
  install -m 0644 "$ca_bundle" "$out/rootfs/etc/ssl/certs/ca-certificates.crt"
else
  echo "rootfs: warning: no CA bundle found on this machine (install ca-certificates);" >&2
  echo "        TLS to public endpoints will fail unless configured with an explicit CA" >&2
fi
