#!/usr/bin/env bash
# Benchmark: how many VMs one `vmattest hostd` keeps attested on this machine, and the server's
# evidence/s, in the same run.
#   REAL real test guests (TCG) and SPARSE idle guests, stood for by sparse RAM files (specs whose
#   QEMU is not running: the daemon reads their RAM files just the same), are registered with a
#   server on SQLite. Each round hashes a 14 MiB kernel-code region in full (policy sha256), signs
#   the evidence and posts it. hostd attests every VM every INTERVAL seconds; over DURATION
#   seconds the script counts rounds (from hostd's status file) and the CPU hostd and the server
#   used. Then vmattest-loadgen (AGENTS agents) measures the same server's evidence/s.
#   scripts/bench-hostd.sh     (results also in target/bench/hostd.json)
#   env: REAL=2 SPARSE=98 INTERVAL=1 DURATION=30 AGENTS=64 LOAD_SECS=15
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
REAL=${REAL:-2}
SPARSE=${SPARSE:-98}
INTERVAL=${INTERVAL:-1}
DURATION=${DURATION:-30}
AGENTS=${AGENTS:-64}
LOAD_SECS=${LOAD_SECS:-15}
REGION_MIB=14

VM=$(build_release)
(cd "$ROOT" && cargo build --release --quiet -p vmattest-loadgen) >&2
LOADGEN=$ROOT/target/release/vmattest-loadgen
"$ROOT/scripts/build-guest.sh" >/dev/null
GUEST=$CACHE/guest
W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-bench-hostd.XXXXXX")
SPECS=()
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for s in "${SPECS[@]}"; do "$VM" vm stop --vm "$s" >/dev/null 2>&1 || true; done
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$ROOT/target/bench"
cd "$W"

spec() { # name
  guest_spec "$1" 128 tcg "run-$1"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "bench-hostd: $REAL real guests, $SPARSE sparse ones, a round every ${INTERVAL}s each" >&2
"$VM" keygen --alg ed25519 --out host.key >/dev/null
"$VM" keygen --alg ed25519 --out chain.key >/dev/null
names=()
for i in $(seq "$REAL"); do
  n=real$i
  spec "$n" > "$n.toml"
  SPECS+=("$W/$n.toml")
  "$VM" vm start --vm "$n.toml" --wait-for READY >/dev/null
  names+=("$n")
done
# The real guests' kernel code starts here (physical); idle guests use the same policy.
load=$(grep -a -m1 '^kcode ' "run-real1/console.log" 2>/dev/null | tr -d '\r' | sed 's/^kcode \([0-9a-f]*\)-.*/\1/')
[ -n "$load" ] || load=1000000
# Idle guests: sparse 128 MiB RAM files holding a copy of a real guest's kernel code, so that
# every round hashes 14 MiB of real bytes, never a hole.
region_file() { # out
  truncate -s 128M "$1"
  dd if=kernel.bin of="$1" bs=1M seek=$((0x$load >> 20)) conv=notrunc status=none
}
if [ "$REAL" -gt 0 ]; then
  dd if=run-real1/ram of=kernel.bin bs=1M skip=$((0x$load >> 20)) count=$REGION_MIB status=none
else
  head -c $((REGION_MIB << 20)) /dev/urandom > kernel.bin
fi
for i in $(seq "$SPARSE"); do
  n=idle$i
  spec "$n" > "$n.toml"
  mkdir -p "run-$n"
  region_file "run-$n/ram"
  names+=("$n")
done
cat > resolved.toml <<TOML
name = "bench-kernel"
hash = "sha256"
schedule_secs = $INTERVAL

[[region]]
name = "kernel-text"
start = 0x$load
len = $((REGION_MIB << 20))
weight = 10
critical = true
kernel_code = true
TOML

"$VM" serve --listen 127.0.0.1:0 --state-dir server --ready-file server.addr 2>server.log &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 400); do [ -s server.addr ] && break; sleep 0.05; done
URL=http://$(tr -d '\n' < server.addr)
R=("$VM" remote --server "$URL" --token-file server/admin.token)
"${R[@]}" host add --name host1 --pubkey host.key.pub >/dev/null
policy_id=$("${R[@]}" --json policy add --policy resolved.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# Baselines: each real guest's own snapshot; one snapshot of an idle RAM file for the others.
"$VM" snapshot init --store idle-store --vm-id idle --alg sha256 >/dev/null
region_file idle.ram
"$VM" snapshot take --store idle-store --memory ram=idle.ram --key chain.key >/dev/null
for n in "${names[@]}"; do
  store=idle-store
  if [[ $n == real* ]]; then
    store=store-$n
    "$VM" snapshot init --store "$store" --vm-id "$n" --alg sha256 >/dev/null
    "$VM" snapshot take --store "$store" --vm "$n.toml" --key chain.key >/dev/null
  fi
  "${R[@]}" vm add --name "$n" --host host1 --policy-id "$policy_id" --subset all --threshold 50 >/dev/null
  "${R[@]}" baseline --vm "$n" --store "$store" --seq 0 --policy resolved.toml --pubkey chain.key.pub >/dev/null
done
"${R[@]}" token --role agent --host host1 --out agent.token >/dev/null

{
  printf 'state_dir = "%s/hostd"\n[server]\nurl = "%s"\ntoken_file = "%s/agent.token"\n' "$W" "$URL" "$W"
  printf '[evidence]\nkey = "%s/host.key"\n[defaults]\nattest_interval_secs = %s\n' "$W" "$INTERVAL"
  for n in "${names[@]}"; do printf '[[vm]]\nspec = "%s/%s.toml"\n' "$W" "$n"; done
} > host.toml
VMATTEST_LOG=warn "$VM" hostd --config host.toml 2>hostd.log &
HOSTD=$!
PIDS+=("$HOSTD")
rounds() {
  "$VM" --json host status --state-dir hostd 2>/dev/null |
    python3 -c 'import json,sys; print(sum(v["rounds"] for v in json.load(sys.stdin)["vms"]))' 2>/dev/null || echo 0
}
sleep 5  # warm-up: every worker has started and done its first round
r0=$(rounds); h0=$(cpu_ticks "$HOSTD"); s0=$(cpu_ticks "$SERVER"); t0=$(date +%s.%N)
sleep "$DURATION"
r1=$(rounds); h1=$(cpu_ticks "$HOSTD"); s1=$(cpu_ticks "$SERVER"); t1=$(date +%s.%N)
"$VM" --json host status --state-dir hostd > status.json
errors=$(python3 -c 'import json,sys; print(sum(1 for v in json.load(open("status.json"))["vms"] if v["last_error"]))')
kill -TERM "$HOSTD"; wait "$HOSTD" || true

echo "bench-hostd: the same server under vmattest-loadgen, $AGENTS agents, ${LOAD_SECS}s" >&2
"$LOADGEN" --server "$URL" --admin-token-file server/admin.token --agents "$AGENTS" \
  --duration "$LOAD_SECS" --json > load.json

python3 - "$ROOT/target/bench/hostd.json" <<PY
import json, os, sys
hz = os.sysconf("SC_CLK_TCK")
secs = $t1 - $t0
rounds = $r1 - $r0
vms = $REAL + $SPARSE
out = {
    "vms": vms, "real": $REAL, "sparse": $SPARSE, "interval_s": $INTERVAL,
    "region_mib": $REGION_MIB, "seconds": round(secs, 2), "rounds": rounds,
    "rounds_per_s": round(rounds / secs, 1),
    "demanded_rounds_per_s": round(vms / $INTERVAL, 1),
    "hostd_cpu_ms_per_round": round(($h1 - $h0) * 1000 / hz / max(rounds, 1), 2),
    "server_cpu_ms_per_round": round(($s1 - $s0) * 1000 / hz / max(rounds, 1), 2),
    "hostd_cores": round(($h1 - $h0) / hz / secs, 2),
    "server_cores": round(($s1 - $s0) / hz / secs, 2),
    "vms_with_errors": $errors,
    "loadgen": json.load(open("load.json")),
}
json.dump(out, open(sys.argv[1], "w"), indent=1)
l = out["loadgen"]
print(f"hostd: {vms} VMs ({$REAL} real), {rounds} rounds in {secs:.1f} s = {out['rounds_per_s']} rounds/s "
      f"(asked {out['demanded_rounds_per_s']}/s); hostd {out['hostd_cpu_ms_per_round']} ms CPU/round "
      f"({out['hostd_cores']} cores), server {out['server_cpu_ms_per_round']} ms CPU/round; "
      f"VMs with errors: {out['vms_with_errors']}")
causes = {}
for v in json.load(open("status.json"))["vms"]:
    if v["last_error"]:
        e = v["last_error"]
        causes[e["what"] + ": " + e["error"][:160]] = causes.get(e["what"] + ": " + e["error"][:160], 0) + 1
for c, n in sorted(causes.items(), key=lambda x: -x[1])[:5]:
    print(f"  {n} VM(s) last failed with {c}")
out["error_causes"] = causes
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(f"server (SQLite), same run: {l['evidence_per_s']:.0f} evidence/s with {l['agents']} agents, "
      f"evidence p50 {l['evidence_latency']['p50_ms']:.1f} ms, p99 {l['evidence_latency']['p99_ms']:.1f} ms, "
      f"errors {l['errors_total']} {l.get('errors', {})}")
PY
