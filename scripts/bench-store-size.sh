#!/usr/bin/env bash
# Benchmark: a store's size on disk against its chain's bundle, with the head cache on and off.
#   An idle test guest (MEM MiB, default 256) under QEMU; a baseline and DELTAS (3) deltas,
#   GAP (2) seconds apart, into two stores by turns: one keeps the head's images (the default),
#   one was made with `snapshot init --no-head-cache`. Each store is then exported as a bundle;
#   the size is what `du` counts (holes are free), the bundle's is its length.
#   scripts/bench-store-size.sh        (results also in target/bench/store-size.json)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prepare_guest
MEM=${MEM:-256}
DELTAS=${DELTAS:-3}
GAP=${GAP:-2}
W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-bench-store-size.XXXXXX")
cleanup() {
  "$VM" vm stop --vm "$W/vm.toml" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$ROOT/target/bench"
guest_spec size "$MEM" auto run >"$W/vm.toml"
"$VM" keygen --alg ed25519 --out "$W/key" >/dev/null
"$VM" snapshot init --store "$W/on" --vm-id size --alg sha256 >/dev/null
"$VM" snapshot init --store "$W/off" --vm-id size --alg sha256 --no-head-cache >/dev/null
"$VM" vm start --vm "$W/vm.toml" --wait-for tick >/dev/null
for _ in $(seq 0 "$DELTAS"); do
  sleep "$GAP"
  for s in on off; do
    "$VM" snapshot take --store "$W/$s" --vm "$W/vm.toml" --key "$W/key" >/dev/null
  done
done
"$VM" vm stop --vm "$W/vm.toml" >/dev/null
for s in on off; do
  "$VM" snapshot export --store "$W/$s" --out "$W/$s.bundle" >/dev/null
done
python3 - "$ROOT/target/bench/store-size.json" "$MEM" "$DELTAS" \
  "$(du -sB1 "$W/on" | cut -f1)" "$(stat -c %s "$W/on.bundle")" \
  "$(du -sB1 "$W/off" | cut -f1)" "$(stat -c %s "$W/off.bundle")" <<'PY'
import json, sys
out, mem, deltas, on, on_b, off, off_b = sys.argv[1], *map(int, sys.argv[2:])
r = {"memory_mib": mem, "deltas": deltas,
     "head_cache_on": {"store_bytes": on, "bundle_bytes": on_b, "ratio": round(on / on_b, 3)},
     "head_cache_off": {"store_bytes": off, "bundle_bytes": off_b, "ratio": round(off / off_b, 3)}}
mib = lambda b: b / 2**20
print(f"idle {mem} MiB guest, baseline + {deltas} deltas: store on disk / bundle")
for k in ("head_cache_on", "head_cache_off"):
    x = r[k]
    print(f"  {k:<15} {mib(x['store_bytes']):8.1f} MiB / {mib(x['bundle_bytes']):8.1f} MiB = {x['ratio']:.2f}x")
print("targets: at most 2.2x with the head cache on, at most 1.05x with it off")
json.dump(r, open(out, "w"), indent=1)
PY
