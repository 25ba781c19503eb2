#!/usr/bin/env bash
# Benchmark: TPM signing on swtpm, in the same run as a software key.
#   1. signatures/s of the TPM-resident ECDSA P-384 key through the Signer trait;
#   2. `snapshot take` of a 16 MiB and a 256 MiB image with a software Ed25519 key and with
#      `--signer tpm`: the TPM's extra cost is the same for both sizes, because a chain needs
#      one TPM signature per link and never one per page.
#   scripts/bench-tpm.sh [TAKES]     (results also in target/bench/tpm.json)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
VM=$(build_release)
TAKES=${1:-5}
W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-bench-tpm.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
port=$(python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError: pass')
mkdir -p "$W/state"
swtpm socket --tpm2 --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
  --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" --flags not-need-init,startup-clear \
  --tpmstate "dir=$W/state" &
PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
export VMATTEST_TPM_TCTI="swtpm:host=127.0.0.1,port=$port"
mkdir -p "$ROOT/target/bench"

rate=$(cd "$ROOT" && cargo run -q --release -p vmattest-tpm --features tpm --example tpm-sign-rate 2>/dev/null |
  awk '/signatures\/s/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) v = $i} END {print v}')

"$VM" keygen --alg ed25519 --out "$W/sw" >/dev/null
"$VM" tpm keygen --out "$W/tpm.pub" >/dev/null
median_take() { # store image signer-args...
  local store=$1 img=$2; shift 2
  local times=()
  for i in $(seq "$TAKES"); do
    printf 'x%08d' "$i" | dd of="$img" bs=1 seek=$((i * 4096)) conv=notrunc status=none
    times+=("$("$VM" --json snapshot take --store "$store" --memory "$img" "$@" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')")
  done
  python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "${times[@]}"
}
rows=()
for mib in 16 256; do
  img=$W/mem-$mib.img
  python3 "$ROOT/scripts/mkimage.py" "$img" "$mib" >/dev/null 2>&1 || head -c $((mib << 20)) /dev/urandom > "$img"
  for kind in software tpm; do
    "$VM" snapshot init --store "$W/$kind-$mib" --vm-id bench >/dev/null
    if [ $kind = software ]; then args=(--key "$W/sw"); else args=(--signer tpm); fi
    "$VM" snapshot take --store "$W/$kind-$mib" --memory "$img" "${args[@]}" >/dev/null  # baseline
    rows+=("$mib $kind $(median_take "$W/$kind-$mib" "$img" "${args[@]}")")
  done
  "$VM" snapshot verify --store "$W/tpm-$mib" --pubkey "$W/tpm.pub" >/dev/null
done

python3 - "$ROOT/target/bench/tpm.json" "$rate" "${rows[@]}" <<'PY'
import json, sys
rate = float(sys.argv[2] or 0)
rows = [r.split() for r in sys.argv[3:]]
t = {(int(m), k): float(s) for m, k, s in rows}
print(f"TPM (swtpm) ECDSA P-384 signatures/s through the Signer trait: {rate:.0f}")
print(f"{'image':>8} {'software key s':>15} {'--signer tpm s':>15} {'TPM extra ms':>13}")
out = {"tpm_signatures_per_s": rate, "takes": []}
for mib in (16, 256):
    sw, tpm = t[(mib, "software")], t[(mib, "tpm")]
    print(f"{mib:>5} MiB {sw:>15.3f} {tpm:>15.3f} {1000 * (tpm - sw):>13.1f}")
    out["takes"].append({"image_mib": mib, "software_s": sw, "tpm_s": tpm, "tpm_extra_ms": 1000 * (tpm - sw)})
print("one TPM signature per link: the extra time does not grow with the image (16x more pages)")
json.dump(out, open(sys.argv[1], "w"))
PY
