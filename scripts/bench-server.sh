#!/usr/bin/env bash
# Benchmark: the attestation server under load, on SQLite and on PostgreSQL.
#   For each database: a fresh `vmattest serve` on a free loopback port with a fresh state
#   directory (PostgreSQL: a private cluster started here, durable settings as for SQLite), then
#   vmattest-loadgen with AGENTS simulated agents, each looping challenge -> signed evidence,
#   for DURATION seconds or MAX_REQUESTS rounds in all, whichever comes first.
#   scripts/bench-server.sh        (results also in TARGET_DIR/bench/server.json)
#   env: AGENTS=64 DURATION=20 MAX_REQUESTS=200000 DATABASES="sqlite postgres"
#        PG_FSYNC=on (off trades PostgreSQL's durability for speed)
#   BASELINE=REV scripts/bench-server.sh: also measures commit REV's server, with its own load
#        generator, on SQLite in the same run: ROUNDS (3) alternating runs of each, then the
#        ratio of the means. REV is built once into the user's cache directory.
#   PATCH_SITES=6300 scripts/bench-server.sh: also ROUNDS alternating SQLite runs of this build
#        with patch-site appraisal (a kernel-code region of that many jump-label sites, whose
#        reports every evidence carries) and without, and the ratio of the means.
#        STATIC_CALLS=4700 adds that many static-call sites and trampolines to the runs with
#        patch sites (as a distribution kernel has besides its jump labels). Agents name an
#        unchanged site report by the fingerprint the challenge gives; WHOLE_SITE_REPORTS=1
#        has them send it whole every round (as if the kernel patched between every two).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
AGENTS=${AGENTS:-64}
DURATION=${DURATION:-20}
MAX_REQUESTS=${MAX_REQUESTS:-200000}
DATABASES=${DATABASES:-sqlite postgres}
PG_FSYNC=${PG_FSYNC:-on}
BASELINE=${BASELINE:-}
ROUNDS=${ROUNDS:-3}
PATCH_SITES=${PATCH_SITES:-0}
STATIC_CALLS=${STATIC_CALLS:-0}
WHOLE=()
[ "${WHOLE_SITE_REPORTS:-0}" = 0 ] || WHOLE=(--whole-site-reports)

cd "$ROOT"
cargo build --release --quiet -p vmattest-cli -p vmattest-loadgen >&2
TARGET=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
VM=$TARGET/release/vmattest
LOADGEN=$TARGET/release/vmattest-loadgen
mkdir -p "$TARGET/bench"

W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-bench-server.XXXXXX")
PIDS=()
# Stops by PID: the server first, then PostgreSQL (SIGINT: fast shutdown).
stop_pid() { # pid signal
  kill "-$2" "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]%:*}" "${PIDS[$i]#*:}"; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_tcp() { # port pid seconds
  for _ in $(seq $(($3 * 20))); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# PostgreSQL refuses to run as root: then its server binaries run as the postgres user.
pg_bin() {
  if [ -n "${VMATTEST_PG_BIN:-}" ]; then echo "$VMATTEST_PG_BIN"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$d" ] || d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$d/initdb" ] || { echo "bench-server: PostgreSQL server binaries not found" >&2; exit 2; }
  echo "$d"
}
PG_RUN=()
[ "$(id -u)" -ne 0 ] || PG_RUN=(setpriv --reuid=postgres --regid=postgres --init-groups --)
# Starts a private cluster in $1; sets PG_URL and records its PID.
start_postgres() {
  local dir=$1 bin port pid
  bin=$(pg_bin)
  mkdir -p "$dir/data" "$dir/sock"
  chmod 700 "$dir/data" "$dir/sock"
  if [ "$(id -u)" -eq 0 ]; then
    chmod 711 "$W" "$(dirname "$dir")" "$dir"
    chown postgres: "$dir/data" "$dir/sock"
  fi
  (cd "$dir" && "${PG_RUN[@]}" "$bin/initdb" -D "$dir/data" -U vmattest --auth=trust -E UTF8 \
    --locale=C --no-instructions >"$dir/initdb.log" 2>&1) || { cat "$dir/initdb.log" >&2; return 1; }
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    # setpriv execs postgres, so $! is the postmaster's PID.
    "${PG_RUN[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -k "$dir/sock" \
      -c listen_addresses=127.0.0.1 -c fsync="$PG_FSYNC" -c max_connections=200 \
      -c shared_buffers=256MB >"$dir/postgres.log" 2>&1 &
    pid=$!
    if wait_tcp "$port" "$pid" 30; then
      PIDS+=("$pid:INT")
      for _ in $(seq 200); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U vmattest -d postgres && break
        sleep 0.05
      done
      "$bin/createdb" -h 127.0.0.1 -p "$port" -U vmattest vmattest
      PG_URL="postgres://vmattest@127.0.0.1:$port/vmattest"
      return 0
    fi
    stop_pid "$pid" INT
  done
  cat "$dir/postgres.log" >&2
  return 1
}

# One measurement: a fresh server of binary $3 on database $1, loaded by $4; the report goes to
# $2/report.json. Further arguments go to the load generator.
measure() { # db dir vmattest loadgen [loadgen args...]
  local db=$1 dir=$2 vm=$3 loadgen=$4 url port pid started=
  shift 4
  mkdir -p "$dir/state"
  case $db in
    sqlite) url="sqlite://$dir/vmattest.db" ;;
    postgres) start_postgres "$dir/pg"; url=$PG_URL ;;
    *) echo "bench-server: unknown database $db (sqlite or postgres)" >&2; exit 2 ;;
  esac
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    "$vm" serve --listen "127.0.0.1:$port" --db "$url" --state-dir "$dir/state" \
      --admin-token-file "$dir/admin-token" >"$dir/serve.log" 2>&1 &
    pid=$!
    if wait_tcp "$port" "$pid" 60; then started=1; break; fi
    stop_pid "$pid" TERM
  done
  [ -n "$started" ] || { echo "bench-server: vmattest serve did not start on $db:" >&2; cat "$dir/serve.log" >&2; exit 1; }
  PIDS+=("$pid:TERM")
  for _ in $(seq 100); do [ -s "$dir/admin-token" ] && break; sleep 0.05; done
  echo "bench-server: $db: $AGENTS agents, ${DURATION}s or $MAX_REQUESTS rounds" >&2
  "$loadgen" --server "http://127.0.0.1:$port" --admin-token-file "$dir/admin-token" \
    --agents "$AGENTS" --duration "$DURATION" --max-requests "$MAX_REQUESTS" --json "$@" \
    >"$dir/report.json" || { echo "bench-server: load generator failed on $db" >&2; tail -20 "$dir/serve.log" >&2; exit 1; }
  # Stop this server (and cluster) before the next one runs.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]%:*}" "${PIDS[$i]#*:}"; done
  PIDS=()
}

# Builds commit $BASELINE's vmattest and load generator once; sets BASE_VM and BASE_LOADGEN.
build_baseline() {
  local rev cache
  rev=$(git rev-parse --verify "$BASELINE^{commit}") || { echo "bench-server: BASELINE $BASELINE is not a commit" >&2; exit 2; }
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmattest/bench-baseline
  BASE_VM=$cache/$rev/vmattest
  BASE_LOADGEN=$cache/$rev/vmattest-loadgen
  [ -x "$BASE_VM" ] && [ -x "$BASE_LOADGEN" ] && return 0
  echo "bench-server: building the baseline $rev (once)" >&2
  mkdir -p "$cache/$rev"
  rm -rf "$W/baseline"
  git worktree add --detach -f "$W/baseline" "$rev" >/dev/null
  (cd "$W/baseline" && CARGO_TARGET_DIR=$cache/target cargo build --release --quiet \
    -p vmattest-cli -p vmattest-loadgen) >&2
  git worktree remove --force "$W/baseline"
  cp "$cache/target/release/vmattest" "$BASE_VM.tmp" && mv "$BASE_VM.tmp" "$BASE_VM"
  cp "$cache/target/release/vmattest-loadgen" "$BASE_LOADGEN.tmp" && mv "$BASE_LOADGEN.tmp" "$BASE_LOADGEN"
}

results=()
for db in $DATABASES; do
  measure "$db" "$W/$db" "$VM" "$LOADGEN"
  results+=("$db=$W/$db/report.json")
done
if [ -n "$BASELINE" ]; then
  build_baseline
  for r in $(seq "$ROUNDS"); do
    measure sqlite "$W/current-$r" "$VM" "$LOADGEN"
    results+=("sqlite-current-$r=$W/current-$r/report.json")
    measure sqlite "$W/baseline-$r" "$BASE_VM" "$BASE_LOADGEN"
    results+=("sqlite-baseline-$r=$W/baseline-$r/report.json")
  done
fi
if [ "$PATCH_SITES" -gt 0 ]; then
  for r in $(seq "$ROUNDS"); do
    measure sqlite "$W/sites-$r" "$VM" "$LOADGEN" --patch-sites "$PATCH_SITES" --static-calls "$STATIC_CALLS" "${WHOLE[@]}"
    results+=("sqlite-sites-$r=$W/sites-$r/report.json")
    measure sqlite "$W/nosites-$r" "$VM" "$LOADGEN"
    results+=("sqlite-nosites-$r=$W/nosites-$r/report.json")
  done
fi

python3 - "$TARGET/bench/server.json" "$PATCH_SITES" "$STATIC_CALLS" "${results[@]}" <<'PY'
import json, sys
out = {}
sites = int(sys.argv[2])
calls = int(sys.argv[3])
for arg in sys.argv[4:]:
    name, path = arg.split("=", 1)
    out[name] = json.load(open(path))
hdr = f"{'database':<10} {'agents':>6} {'rounds':>8} {'evidence/s':>11} {'ev p50 ms':>10} {'ev p99 ms':>10} {'ev max ms':>10} {'round p50':>10} {'round p99':>10} {'errors':>7}"
print(hdr)
for name, r in out.items():
    e, rd = r["evidence_latency"], r["round_latency"]
    print(f"{name:<10} {r['agents']:>6} {r['requests']:>8} {r['evidence_per_s']:>11.1f} {e['p50_ms']:>10.2f} "
          f"{e['p99_ms']:>10.2f} {e['max_ms']:>10.2f} {rd['p50_ms']:>10.2f} {rd['p99_ms']:>10.2f} {r['errors_total']:>7}")
for name, r in out.items():
    for kind, n in r["errors"].items():
        print(f"  {name}: {kind}: {n}")
mean = lambda kind: [r["evidence_per_s"] for n, r in out.items() if n.startswith(f"sqlite-{kind}-")]
def compare(key, a, b, label_a, label_b):
    """The ratio of the means of runs named sqlite-A-* and sqlite-B-*, when there are both."""
    xs, ys = mean(a), mean(b)
    if not (xs and ys):
        return
    ratio = (sum(xs) / len(xs)) / (sum(ys) / len(ys))
    out[key] = ratio
    print(f"SQLite, same run: {label_a} {sum(xs) / len(xs):.0f}/s, {label_b} {sum(ys) / len(ys):.0f}/s "
          f"(mean of {len(xs)}), ratio {ratio:.3f}x")
compare("baseline_ratio", "current", "baseline", "current", "baseline")
label = f"with {sites} patch sites" + (f" and {calls} static calls" if calls else "")
compare("patch_sites_ratio", "sites", "nosites", label, "without")
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
