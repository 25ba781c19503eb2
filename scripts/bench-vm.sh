#!/usr/bin/env bash
# Benchmark: capture downtime of a real QEMU guest (TCG) against QEMU's own snapshot-save and
# migrate-to-file of the same guest, in the same run, for 256 MiB and 1 GiB of guest RAM; and
# bytes stored per idle delta against a full capture. Each guest is captured paused (the
# default) and live (`--live`, RAM read from a background snapshot while the guest runs); its
# run directory, and so its RAM file, is on /dev/shm, which live capture needs.
#
#   scripts/bench-vm.sh            (MEMS="256 1024" ALGS="sha256 blake3" DELTAS=5 GAP=2 FILL=75
#                                   to change)
#
# FILL percent of each guest's RAM holds random bytes (the guest's fill=MIB, as much of it as the
# guest can spare) before the first capture, so that captures see populated memory; FILL=0
# measures an idle guest.
#
# The store's tree algorithm matters for capture: a dm-verity (sha256) leaf does not depend on
# the page's position, so zero pages share one digest and are never hashed; BLAKE3 (b3sum) leaves
# do, so every page is hashed.
#
# Each guest: kernel + busybox initramfs, a 64 MiB raw data disk the guest writes to every second,
# and a 64 MiB qcow2 disk that holds QEMU's internal snapshots (snapshot-save needs one; vmattest
# captures it too, through qemu-img, inside its downtime). Downtime is stop -> cont as vmattest
# reports it; for snapshot-save it is the job's duration (the guest is paused throughout), for
# migrate it is stop -> migration completed -> cont. Results also go to target/bench/vm.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prepare_guest
MEMS=${MEMS:-256 1024}
ALGS=${ALGS:-sha256 blake3}
DELTAS=${DELTAS:-5}
GAP=${GAP:-2}
FILL=${FILL:-75}
W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-bench-vm.XXXXXX")
RUNS=$(mktemp -d /dev/shm/vmattest-bench-run.XXXXXX)
SPECS=()
cleanup() {
  for s in "${SPECS[@]}"; do "$VM" vm stop --vm "$s" >/dev/null 2>&1 || true; done
  rm -rf "$W" "$RUNS"
}
trap cleanup EXIT
mkdir -p "$ROOT/target/bench"
"$VM" keygen --alg ed25519 --out "$W/key" >/dev/null
field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

results=()
for ALG in $ALGS; do
for MEM in $MEMS; do
  D=$W/$ALG-m$MEM; mkdir -p "$D"
  truncate -s 64M "$D/data.raw"
  qemu-img create -q -f qcow2 "$D/state.qcow2" 64M
  {
    guest_spec "bench-$ALG-$MEM" "$MEM" auto "$RUNS/$ALG-$MEM" "fill=$((MEM * FILL / 100))"
    cat <<TOML

[[disk]]
name = "data"
path = "data.raw"
format = "raw"

[[disk]]
name = "state"
path = "state.qcow2"
format = "qcow2"
TOML
  } >"$D/vm.toml"
  SPECS+=("$D/vm.toml")
  "$VM" snapshot init --store "$D/store" --vm-id "bench-$ALG-$MEM" --alg "$ALG" >/dev/null
  # Random bytes fill at a few MiB/s under TCG.
  "$VM" vm start --vm "$D/vm.toml" --wait-for READY --timeout 1800 >/dev/null
  filled=$(grep -o 'filled [0-9]* MiB' "$RUNS/$ALG-$MEM/console.log" | awk '{ print $2 }')
  filled=${filled:-0}
  sleep "$GAP"
  take() { "$VM" --json snapshot take --store "$D/store" --vm "$D/vm.toml" --key "$W/key" "$@"; }
  base=$(take)
  base_down=$(echo "$base" | field downtime_ms)
  base_bytes=$(echo "$base" | field stored_bytes)
  downs=(); bytes=()
  for _ in $(seq "$DELTAS"); do
    sleep "$GAP"
    d=$(take)
    downs+=("$(echo "$d" | field downtime_ms)")
    bytes+=("$(echo "$d" | field stored_bytes)")
  done
  ours=$(median "${downs[@]}")
  delta_bytes=$(median "${bytes[@]}")
  lives=(); live_total=()
  for _ in $(seq "$DELTAS"); do
    sleep "$GAP"
    t0=$(date +%s.%N)
    d=$(take --live)
    live_total+=("$(python3 -c "import sys,time; print(time.time() - float(sys.argv[1]))" "$t0")")
    lives+=("$(echo "$d" | field downtime_ms)")
  done
  live=$(median "${lives[@]}")
  live_s=$(median "${live_total[@]}")
  sock=$RUNS/$ALG-$MEM/qmp.sock
  saves=(); migs=()
  for _ in 1 2 3; do
    sleep 1
    saves+=("$(python3 "$ROOT/scripts/qemu-peers.py" "$sock" snapshot-save state | field seconds)")
    sleep 1
    migs+=("$(python3 "$ROOT/scripts/qemu-peers.py" "$sock" migrate "$D/full.mig" | field seconds)")
    rm -f "$D/full.mig"
  done
  save=$(median "${saves[@]}"); mig=$(median "${migs[@]}")
  "$VM" vm stop --vm "$D/vm.toml" >/dev/null
  python3 - "$ALG" "$MEM" "$ours" "$base_down" "$save" "$mig" "$delta_bytes" "$base_bytes" "$filled" "$live" "$live_s" > "$D/result.json" <<'PY'
import json, sys
alg, mem, ours, base, save, mig, dbytes, bbytes = sys.argv[1:9]
ours, base, save, mig = float(ours) / 1000, float(base) / 1000, float(save), float(mig)
live, live_s = float(sys.argv[10]) / 1000, float(sys.argv[11])
print(json.dumps({"alg": alg, "memory_mib": int(mem), "filled_mib": int(sys.argv[9]), "vmattest_delta_downtime_s": round(ours, 4),
  "vmattest_live_downtime_s": round(live, 4), "vmattest_live_take_s": round(live_s, 3),
  "ratio_live_downtime_vs_snapshot_save": round(live / save, 4),
  "vmattest_baseline_downtime_s": round(base, 4), "qemu_snapshot_save_s": round(save, 4),
  "qemu_migrate_file_s": round(mig, 4), "ratio_downtime_vs_snapshot_save": round(ours / save, 3),
  "ratio_downtime_vs_migrate": round(ours / mig, 3), "idle_delta_bytes": int(float(dbytes)),
  "full_capture_bytes": int(bbytes), "ratio_delta_vs_full": round(float(dbytes) / int(bbytes), 4)}))
PY
  results+=("$(cat "$D/result.json")")
done
done

echo "capture downtime (median of $DELTAS deltas, ${GAP}s apart, ${FILL}% of RAM filled) vs QEMU on the same guest, accel $(grep -q kvm_pvm /proc/modules 2>/dev/null && echo tcg || echo auto)"
printf '%-7s %-6s %7s %10s %10s %10s %14s %10s %9s %9s %9s %12s %12s %8s\n' alg MiB filled "delta s" "live s" "base s" "snapshot-save" "migrate" "/save" "live/save" "/migrate" "delta B" "full B" "ratio"
for r in "${results[@]}"; do
  echo "$r" | python3 -c 'import json,sys
r = json.load(sys.stdin)
print("%-7s %-6d %7d %10.3f %10.4f %10.3f %14.3f %10.3f %9.3f %9.4f %9.3f %12d %12d %8.4f" % (r["alg"], r["memory_mib"], r["filled_mib"], r["vmattest_delta_downtime_s"],
  r["vmattest_live_downtime_s"], r["vmattest_baseline_downtime_s"], r["qemu_snapshot_save_s"], r["qemu_migrate_file_s"],
  r["ratio_downtime_vs_snapshot_save"], r["ratio_live_downtime_vs_snapshot_save"], r["ratio_downtime_vs_migrate"], r["idle_delta_bytes"],
  r["full_capture_bytes"], r["ratio_delta_vs_full"]))'
done
echo "targets: downtime <= 0.5x snapshot-save; live downtime <= 30 ms and <= 0.05x snapshot-save; idle delta <= 5% of a full capture"
printf '[%s]\n' "$(IFS=,; echo "${results[*]}")" > "$ROOT/target/bench/vm.json"
