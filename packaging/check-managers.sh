#!/usr/bin/env bash
# Compares the vaultbridge plugin on every manager of a swarm: any manager
# can become leader, and only the leader's plugin answers, so a manager whose
# plugin is missing, disabled, another build or set up differently fails
# tasks only once it leads. Run it after installing or changing the plugin:
#
#   packaging/check-managers.sh [--plugin NAME] MANAGER...
#
# MANAGER is a Docker context name, or an engine address for `docker -H`
# (ssh://admin@m1, tcp://m1:2376, unix:///path/docker.sock).
# Per manager it prints one line: the plugin's state, reference, rootfs
# digest and a digest of its settings. Then, for each manager that differs
# from the majority, what differs: enabled, reference, rootfs, the mounts'
# sources, and the NAMES of environment settings whose values differ (values
# are not printed: they may hold credentials).
# Exit 0 when every manager has the same enabled plugin, 1 when one differs
# or has none, 2 when a manager cannot be asked.
#
# It compares what the engines hold, not the files behind the config mount:
# run `vaultbridge check` on each manager for those.
set -euo pipefail

plugin=vaultbridge
managers=()
while (($#)); do
  case $1 in
    --plugin) plugin=${2:?--plugin needs a name}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) managers+=("$1"); shift ;;
  esac
done
((${#managers[@]} >= 2)) || { echo "check-managers: name at least two managers (see --help)" >&2; exit 2; }

at() {
  if [[ $1 == *://* ]]; then docker -H "$1" "${@:2}"; else docker --context "$1" "${@:2}"; fi
}

# One field per line: enabled, reference, rootfs diff ids, mounts, env.
format='{{.Enabled}}
{{.PluginReference}}
{{range .Config.Rootfs.DiffIds}}{{.}} {{end}}
{{range .Settings.Mounts}}{{.Name}}={{.Source}} {{end}}
{{range .Settings.Env}}{{.}}
{{end}}'

declare -A enabled reference rootfs mounts env_digest env_of
status=0
for m in "${managers[@]}"; do
  if ! at "$m" version -f '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "$m: cannot reach its engine" >&2
    exit 2
  fi
  if ! out=$(at "$m" plugin inspect -f "$format" "$plugin" 2>/dev/null); then
    enabled[$m]=missing reference[$m]=- rootfs[$m]=- mounts[$m]=- env_digest[$m]=- env_of[$m]=""
    continue
  fi
  enabled[$m]=$(sed -n 1p <<<"$out")
  reference[$m]=$(sed -n 2p <<<"$out")
  rootfs[$m]=$(sed -n 3p <<<"$out" | sha256sum | cut -c1-12)
  mounts[$m]=$(sed -n 4p <<<"$out")
  env_of[$m]=$(sed -n '5,$p' <<<"$out" | sed '/^$/d' | sort)
  env_digest[$m]=$(sha256sum <<<"${env_of[$m]}" | cut -c1-12)
done

# The value most managers share, for one of the maps above.
majority() {
  local -n map=$1
  local m
  for m in "${managers[@]}"; do printf '%s\n' "${map[$m]}"; done | sort | uniq -c | sort -rn | head -n1 | sed 's/^ *[0-9]* //'
}
want_reference=$(majority reference)
want_rootfs=$(majority rootfs)
want_mounts=$(majority mounts)
want_env=$(majority env_digest)

for m in "${managers[@]}"; do
  printf '%s: enabled=%s reference=%s rootfs=%s mounts=[%s] env=%s\n' "$m" "${enabled[$m]}" \
    "${reference[$m]}" "${rootfs[$m]}" "${mounts[$m]% }" "${env_digest[$m]}"
done
for m in "${managers[@]}"; do
  problems=()
  if [[ ${enabled[$m]} == missing ]]; then
    problems+=("no plugin named '$plugin'")
  else
    [[ ${enabled[$m]} == true ]] || problems+=("plugin disabled")
    [[ ${reference[$m]} == "$want_reference" ]] || problems+=("reference ${reference[$m]} where the others have $want_reference")
    [[ ${rootfs[$m]} == "$want_rootfs" ]] || problems+=("another build (rootfs ${rootfs[$m]}, others $want_rootfs)")
    [[ ${mounts[$m]} == "$want_mounts" ]] || problems+=("mounts [${mounts[$m]% }] where the others have [${want_mounts% }]")
    if [[ ${env_digest[$m]} != "$want_env" ]]; then
      # A manager with the majority's environment, to name what differs.
      for ref in "${managers[@]}"; do [[ ${env_digest[$ref]} == "$want_env" ]] && break; done
      # Lines in one but not the other: set, unset or changed, by name.
      differing=$(comm -3 <(sort <<<"${env_of[$m]}") <(sort <<<"${env_of[$ref]}") | tr -d '\t' | sed 's/=.*//' | sort -u | paste -sd, -)
      problems+=("environment differs: $differing")
    fi
  fi
  if ((${#problems[@]})); then
    status=1
    printf 'DIFFERS %s: %s\n' "$m" "$(IFS=';'; echo "${problems[*]}" | sed 's/;/; /g')"
  fi
done
((status == 0)) && echo "ok: the same enabled plugin on ${#managers[@]} managers"
exit "$status"
