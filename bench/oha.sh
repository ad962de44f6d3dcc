#!/usr/bin/env bash
# Issue 18's comparison, measured by an independent load client, oha
# (HTTP/1.1 keep-alive, one request in flight per connection):
#
#   hit:  the floor (bench/src/floor.rs: a bare hyper server answering the
#         same Docker response on a Unix socket) against vaultbridge serving
#         the same 32-byte secret from its cache (file provider), c = 1, 64, 256;
#   miss: OpenBao read directly over HTTP (oha with X-Vault-Token, GET
#         /v1/secret/data/bench) against vaultbridge asked for the same secret
#         per task (vaultbridge.reuse=false: every request reaches OpenBao),
#         and against the miss's floor (bench/src/proxy_floor.rs: a bare
#         proxy from the socket to OpenBao), c = 1, 16.
#
# Prints p50, p99 and req/s of every run, the server's CPU time per request
# (for the direct row, OpenBao's), and the ratios (medians over the rounds). With VAULTBRIDGE_BASELINE_BIN, the same rows for that binary too,
# alternated with the others in the same run. Every process it starts is
# stopped on exit; servers listen on Unix sockets in a temp dir and on
# 127.0.0.1 only.
#
# Usage: VAULTBRIDGE_BIN=<plugin binary> bench/oha.sh [hit|miss|all]
#   OHA                     oha binary (default: oha on PATH, else /opt/oha/bin/oha)
#   OHA_SECONDS             seconds per measured run (3), after a 0.5 s warm-up
#   OHA_ROUNDS              rounds of every row, alternating the order (1)
#   VAULTBRIDGE_BASELINE_BIN  a second plugin binary, measured alongside
#   VAULTBRIDGE_BENCH_BIN   the bench binary that serves the floor (built if unset)
#   bao                     OpenBao, from .venv-test/bin (tests/setup.sh) or PATH
#   OHA_PIN=1               hit rows on one core each: the servers on CPU 0, oha on
#                           CPU 1 (taskset), so that the kernel's scheduler does not
#                           decide how much of the machine each side gets
#   FLOOR_WORKERS           the floor's tokio worker threads (its default: one a core)
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
seconds=${OHA_SECONDS:-3}
rounds=${OHA_ROUNDS:-1}
plugin=${VAULTBRIDGE_BIN:?set VAULTBRIDGE_BIN to the plugin binary to measure}
baseline=${VAULTBRIDGE_BASELINE_BIN:-}
oha=${OHA:-$(command -v oha || echo /opt/oha/bin/oha)}
server_cpu=() client_cpu=()
if [[ ${OHA_PIN:-} == 1 ]]; then
  server_cpu=(taskset -c 0) client_cpu=(taskset -c 1)
fi
[[ -x $oha ]] || { echo "oha.sh: oha not found (cargo install oha, or set OHA)" >&2; exit 1; }
export PATH="$PWD/.venv-test/bin:$PATH"

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

results=$work/results.tsv
: >"$results"

# The request the engine sends (the same fields as tests' engine_request).
engine_request() { # NAME LABELS_JSON TASK_ID
  printf '{"SecretName":"%s","SecretLabels":%s,"ServiceHostname":"{{.Service.Name}}-{{.Task.Slot}}","ServiceID":"k3fz2yq8e0v1","ServiceName":"st_api","ServiceLabels":{"com.docker.stack.namespace":"st"},"TaskID":"%s","TaskName":"st_api.2.x9q1w2e3r4t5","TaskImage":"repo/api:1.4@sha256:0123","NodeID":"n7c0a1b2c3d4","ServiceEndpointSpec":{"Mode":1,"Ports":[{"Name":"http","Protocol":0,"TargetPort":8080,"PublishedPort":80,"PublishMode":1}]}}' "$1" "$2" "$3"
}

ask() { # SOCKET BODY_FILE: the answer's body
  curl -sS --max-time 5 --unix-socket "$1" --data-binary "@$2" http://plugin/SecretProvider.GetSecret
}

wait_socket() { # SOCKET PID
  local i
  for ((i = 0; i < 1000; i++)); do
    curl -s --max-time 1 --unix-socket "$1" -d '' -o /dev/null http://plugin/Plugin.Activate && return 0
    kill -0 "$2" 2>/dev/null || { echo "oha.sh: server for $1 exited" >&2; return 1; }
    sleep 0.01
  done
  echo "oha.sh: $1 did not answer" >&2
  return 1
}

# start_plugin NAME BINARY CONFIG_TEXT: a `serve` on $work/NAME.sock, its log
# in $work/NAME.log (the default `info` level: one line per GetSecret).
start_plugin() {
  local name=$1 bin=$2
  printf '%s\n' "$3" >"$work/$name.toml"
  "${server_cpu[@]}" "$bin" serve --socket "$work/$name.sock" --config "$work/$name.toml" </dev/null >"$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$name.pid"
  wait_socket "$work/$name.sock" $!
}

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One oha run against the server whose pid is PID; appends "ROW C p50_us
# p99_us req/s cpu_us_per_request ok other" to $results. ok: 200 answers (the
# plugin's Err answers are 200 too: its log is checked). cpu: the server's
# CPU time during the run over its answers (less noisy than req/s).
measure() { # ROW C PID URL [oha args...]
  local row=$1 c=$2 pid=$3 url=$4 before after
  shift 4
  "${client_cpu[@]}" "$oha" -z 0.5s -c "$c" --no-tui --output-format quiet "$@" "$url" >/dev/null
  before=$(cpu_ticks "$pid")
  "${client_cpu[@]}" "$oha" -z "${seconds}s" -c "$c" --no-tui --output-format json "$@" "$url" >"$work/run.json"
  after=$(cpu_ticks "$pid")
  python3 - "$row" "$c" "$work/run.json" "$((after - before))" "$(getconf CLK_TCK)" >>"$results" <<'EOF'
import json, sys
row, c, path, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(path))
m = r["metrics"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
other = sum(codes.values()) - ok
cpu = ticks / hz * 1e6 / max(sum(codes.values()), 1)
print(f'{row}\t{c}\t{m["latency_ms"]["p50"] * 1e3:.1f}\t{m["latency_ms"]["p99"] * 1e3:.1f}\t{m["requests_per_sec"]:.0f}\t{cpu:.1f}\t{ok}\t{other}')
EOF
  tail -n 1 "$results" | awk -F'\t' '{ printf "%-26s c=%-4s p50=%9s µs  p99=%9s µs  %8s req/s  cpu %6s µs/req  (200: %s, other: %s)\n", $1, $2, $3, $4, $5, $6, $7, $8 }'
}

# A plugin's failed lookups so far (it answers them 200 with an Err).
failures() { grep -c "secret lookup failed" "$work/$1.log" || true; }

expect_answers() { # SUFFIX BODY_FILE WANT ROWS...: each row's socket answers WANT
  local suffix=$1 body=$2 want=$3 row got
  shift 3
  for row; do
    got=$(ask "$work/$row$suffix.sock" "$body")
    [[ $got == "$want" ]] || { echo "oha.sh: $row answers $got, not $want" >&2; exit 1; }
  done
}

expect_no_failures() { # SUFFIX ROWS...: no row's log has a failed lookup
  local suffix=$1 row n
  shift
  for row; do
    n=$(failures "$row$suffix")
    ((n == 0)) || { echo "oha.sh: $row failed $n lookups (see its log)" >&2; exit 1; }
  done
}

# Rows in order, reversed on odd rounds: each row's neighbours alternate.
ordered() { # ROUND ROWS...
  local round=$1
  shift
  if ((round % 2)); then
    local out=() i
    for ((i = $#; i >= 1; i--)); do out+=("${!i}"); done
    printf '%s\n' "${out[@]}"
  else
    printf '%s\n' "$@"
  fi
}

secret='bench-password-0123456789abcdef!'

bench_bin=${VAULTBRIDGE_BENCH_BIN:-}
if [[ -z $bench_bin ]]; then
  cargo build --release -q -p vaultbridge-bench
  bench_bin=${CARGO_TARGET_DIR:-target}/release/vaultbridge-bench
fi

if [[ $what == hit || $what == all ]]; then
  env ${FLOOR_WORKERS:+TOKIO_WORKER_THREADS=$FLOOR_WORKERS} "${server_cpu[@]}" "$bench_bin" floor --socket "$work/floor.sock" </dev/null >/dev/null 2>&1 &
  pids+=($!)
  echo $! >"$work/floor.pid"
  wait_socket "$work/floor.sock" $!
  mkdir "$work/secrets"
  printf '%s' "$secret" >"$work/secrets/bench"
  config="[providers.local]
type = \"file\"
root = \"$work/secrets\"
cache_ttl = \"1h\""
  hit_rows=(floor vaultbridge)
  start_plugin vaultbridge "$plugin" "$config"
  if [[ -n $baseline ]]; then
    start_plugin baseline "$baseline" "$config"
    hit_rows+=(baseline)
  fi
  engine_request bench '{}' x9q1w2e3r4t5 >"$work/hit.json"
  expect_answers "" "$work/hit.json" "$(ask "$work/floor.sock" "$work/hit.json")" "${hit_rows[@]:1}"
  echo "hit: oha -z ${seconds}s -c C -m POST -D <engine request> --unix-socket SOCKET http://plugin/SecretProvider.GetSecret"
  for ((round = 0; round < rounds; round++)); do
    for c in 1 64 256; do
      while read -r row; do
        measure "hit $row" "$c" "$(cat "$work/$row.pid")" http://plugin/SecretProvider.GetSecret \
          -m POST -D "$work/hit.json" --unix-socket "$work/$row.sock"
      done < <(ordered "$round" "${hit_rows[@]}")
    done
  done
  expect_no_failures "" "${hit_rows[@]:1}"
fi

if [[ $what == miss || $what == all ]]; then
  # Not pinned: OpenBao's own CPU is part of a miss.
  server_cpu=() client_cpu=()
  command -v bao >/dev/null || { echo "oha.sh: bao not found: run tests/setup.sh" >&2; exit 1; }
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  addr=http://127.0.0.1:$port
  mkdir "$work/bao"
  env -i PATH="$PATH" HOME="$work/bao" bao server -dev -dev-root-token-id=root \
    -dev-listen-address="127.0.0.1:$port" </dev/null >"$work/bao/log" 2>&1 &
  pids+=($!)
  for ((i = 0; i < 3000; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$addr/v1/sys/health" || true) == 200 ]] && break
    sleep 0.01
  done
  env -i PATH="$PATH" HOME="$work/bao" BAO_ADDR="$addr" BAO_TOKEN=root \
    bao kv put secret/bench "pw=$secret" >/dev/null
  printf 'root' >"$work/root-token"
  # The server itself (the PyPI package's `bao` may run it as a child).
  bao_pid=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  # A concurrency limit above the load: the rows measure overhead, not the
  # (deliberate) default limit of 16 calls in flight.
  config="[providers.bao]
type = \"vault\"
address = \"$addr\"
max_concurrency = 1024
auth = { method = \"token\", token_file = \"$work/root-token\" }"
  # The miss's floor: a bare proxy from the socket to OpenBao
  # (bench/src/proxy_floor.rs), what any driver must at least spend.
  "$bench_bin" proxy-floor --socket "$work/proxy-miss.sock" "127.0.0.1:$port" root \
    /v1/secret/data/bench pw </dev/null >/dev/null 2>&1 &
  pids+=($!)
  echo $! >"$work/proxy-miss.pid"
  wait_socket "$work/proxy-miss.sock" $!
  miss_rows=(direct proxy vaultbridge)
  start_plugin vaultbridge-miss "$plugin" "$config"
  if [[ -n $baseline ]]; then
    start_plugin baseline-miss "$baseline" "$config"
    miss_rows+=(baseline)
  fi
  # No task id: with one, every request after the first is the same task
  # asking again, answered from the per-task store without a backend call.
  engine_request bench '{"vaultbridge.path":"bench","vaultbridge.field":"pw","vaultbridge.reuse":"false"}' '' >"$work/miss.json"
  want=$(printf '{"Value":"%s","DoNotReuse":true}' "$(printf '%s' "$secret" | base64 -w0)")
  expect_answers -miss "$work/miss.json" "$want" "${miss_rows[@]:1}"
  miss_plugins=("${miss_rows[@]:2}")
  curl -sf -H "X-Vault-Token: root" "$addr/v1/secret/data/bench" | grep -q "$secret" ||
    { echo "oha.sh: the direct read does not return the secret" >&2; exit 1; }
  echo "miss: oha -z ${seconds}s -c C -m POST -D <engine request, reuse=false> --unix-socket SOCKET http://plugin/SecretProvider.GetSecret"
  echo "direct: oha -z ${seconds}s -c C -H 'X-Vault-Token: root' $addr/v1/secret/data/bench"
  for ((round = 0; round < rounds; round++)); do
    for c in 1 16; do
      while read -r row; do
        if [[ $row == direct ]]; then
          measure "miss direct" "$c" "$bao_pid" "$addr/v1/secret/data/bench" -H "X-Vault-Token: root"
        else
          measure "miss $row" "$c" "$(cat "$work/$row-miss.pid")" http://plugin/SecretProvider.GetSecret \
            -m POST -D "$work/miss.json" --unix-socket "$work/$row-miss.sock"
        fi
      done < <(ordered "$round" "${miss_rows[@]}")
    done
  done
  expect_no_failures -miss "${miss_plugins[@]}"
fi

echo
echo "medians over $rounds round(s); load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, c, p50, p99, rps, cpu, ok, other = line.rstrip("\n").split("\t")
    rows.setdefault((row, int(c)), []).append((float(p50), float(p99), float(rps), float(cpu)))
def med(row, c, i):
    runs = rows.get((row, c))
    return statistics.median(r[i] for r in runs) if runs else None
for (row, c) in rows:
    print(f"{row:<22} c={c:<4} p50={med(row, c, 0):9.1f} µs  p99={med(row, c, 1):9.1f} µs  {med(row, c, 2):8.0f} req/s  cpu {med(row, c, 3):6.1f} µs/req")
def ratios(name, against, cs):
    for c in cs:
        if med(name, c, 0) is None or med(against, c, 0) is None:
            continue
        # The direct row's CPU is OpenBao's, not a client's: no ratio to it.
        cpu = "" if against == "miss direct" else f", cpu/req {med(name, c, 3) / med(against, c, 3):.2f}x"
        print(f"{name} / {against}, c={c}: p50 {med(name, c, 0) / med(against, c, 0):.2f}x, "
              f"p99 {med(name, c, 1) / med(against, c, 1):.2f}x, req/s {med(name, c, 2) / med(against, c, 2):.2f}x{cpu}")
print()
print("targets: hit c=1 p50 <= 1.2x, c=64 req/s >= 0.85x, c=64 p99 <= 2x the floor; miss c=1 p50 <= 1.15x, c=16 req/s >= 0.85x the direct read")
for name in ("hit vaultbridge", "hit baseline"):
    ratios(name, "hit floor", (1, 64, 256))
for name in ("miss proxy", "miss vaultbridge", "miss baseline"):
    ratios(name, "miss direct", (1, 16))
ratios("miss vaultbridge", "miss proxy", (1, 16))
ratios("hit vaultbridge", "hit baseline", (1, 64, 256))
ratios("miss vaultbridge", "miss baseline", (1, 16))
EOF
