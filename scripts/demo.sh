#!/usr/bin/env bash
# The end-to-end demo on a real QEMU guest: boot, baseline, deltas, verify, tamper and detect,
# roll back (the guest continues from the captured counter), migrate to another store and QEMU,
# prove one page of guest memory to someone who never sees it, and attest the running guest's
# kernel to a verifier server, which detects a patched byte and has the agent roll it back.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
prepare_guest
W=$(mktemp -d "${TMPDIR:-/tmp}/vmattest-demo.XXXXXX")
SERVER_PID=
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  "$VM" vm stop --vm "$W/demo.toml" >/dev/null 2>&1 || true
  "$VM" vm stop --vm "$W/host-b.toml" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s|$W/||g; s|$VM|vmattest|g"; "$@"; }
ticks() { { grep -a -o 'tick [0-9]*' "$1" 2>/dev/null || true; } | awk '{print $2}'; }
last_tick() { ticks "$1" | awk 'END {print $1}'; }
first_tick() { ticks "$1" | awk 'NR == 1 {print $1}'; }
wait_tick() { # wait for a tick newer than $2 in console $1
  for _ in $(seq 600); do t=$(last_tick "$1"); [ -n "$t" ] && [ "$t" -gt "${2:-0}" ] && { echo "$t"; return; }; sleep 0.05; done
  echo "no new tick in $1" >&2; exit 1
}
spec() { # name run_dir disk
  guest_spec "$1" 256 auto "$2"
  cat <<TOML

[[disk]]
name = "disk0"
path = "$3"
format = "raw"
TOML
}
cd "$W"
truncate -s 16M disk0.raw
spec demo run-demo disk0.raw > demo.toml
CONSOLE=$W/run-demo/console.log

say "a guest: Debian kernel + busybox; it prints 'tick N' each second and writes block N%256 of its disk"
cat demo.toml
run "$VM" vm start --vm demo.toml --wait-for READY
# The guest printed its kernel symbols and load address at boot (for the runtime policy below).
grep -a -E '^(ksym|kcode) ' "$CONSOLE" | tr -d '\r' > guest-symbols.txt
run "$VM" keygen --alg hybrid --out host.key
run "$VM" snapshot init --store chain --vm-id demo --alg sha256   # dm-verity trees: zero pages are free to capture

say "baseline and three deltas while the guest runs (RAM hashed in place, device state via QMP)"
declare -a AT
for seq in 0 1 2 3; do
  AT[$seq]=$(wait_tick "$CONSOLE" "$(last_tick "$CONSOLE")")
  run "$VM" snapshot take --store chain --vm demo.toml --key host.key
  echo "(seq $seq captured at guest tick ${AT[$seq]})"
  sleep 1
done
run "$VM" snapshot log --store chain
run "$VM" snapshot verify --store chain --pubkey host.key.pub

say "roll back to seq 1: verify, replace RAM, disk and device state, resume in a new QEMU"
run "$VM" snapshot restore --store chain --pubkey host.key.pub --seq 1 --vm demo.toml
wait_tick "$CONSOLE" 0 >/dev/null; first=$(first_tick "$CONSOLE")
echo "(captured at tick ${AT[1]}; the restored guest's first tick is $first)"
[ "$first" -eq $((AT[1] + 1)) ] || { echo "the guest did not continue from seq 1" >&2; exit 1; }

say "tamper with a stored page batch of the baseline: the rollback is refused, the guest runs on"
pid=$("$VM" --json vm status --vm demo.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
victim=$(python3 - chain <<'PY'
import os, sys
objs = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(sys.argv[1], "objects")) for f in fs]
batches = [p for p in objs if open(p, "rb").read(10)[8:10] == b"\0\6"]
print(min(batches, key=os.path.getmtime))
PY
)
cp "$victim" victim.orig
python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[len(b)//2]^=1; open(p,'wb').write(b)" "$victim"
set +e
run "$VM" snapshot restore --store chain --pubkey host.key.pub --seq 2 --vm demo.toml
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "expected exit 1 for a tampered chain, got $rc" >&2; exit 1; }
now=$("$VM" --json vm status --vm demo.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
[ "$now" = "$pid" ] || { echo "the running VM was touched" >&2; exit 1; }
echo "(exit $rc: tampering detected; QEMU pid $pid untouched, guest at tick $(wait_tick "$CONSOLE" "$(last_tick "$CONSOLE")"))"
cp victim.orig "$victim"

say "migrate: export a bundle, import it on 'host B' (another store), resume it under a new QEMU"
run "$VM" snapshot export --store chain --out chain.bundle
run "$VM" snapshot import --store host-b --pubkey host.key.pub chain.bundle
truncate -s 16M disk-b.raw
spec host-b run-b disk-b.raw > host-b.toml
run "$VM" snapshot restore --store host-b --pubkey host.key.pub --seq 3 --vm host-b.toml
wait_tick "$W/run-b/console.log" 0 >/dev/null
first=$(first_tick "$W/run-b/console.log")
echo "(seq 3 was captured at tick ${AT[3]}; on host B the guest's first tick is $first)"
[ "$first" -eq $((AT[3] + 1)) ] || { echo "the migrated guest did not continue" >&2; exit 1; }

say "prove one page of guest RAM at seq 3 without revealing the rest"
run "$VM" snapshot prove --store chain --pubkey host.key.pub --seq 3 --component ram --page 256 --out page.proof
root=$("$VM" --json show page.proof | python3 -c 'import json,sys; print(json.load(sys.stdin)["root"])')
run "$VM" verify-proof page.proof --root "$root" --extract page.bin
echo "(the verifier learns 4096 bytes of guest RAM and that they belong to the signed seq 3 state)"
run "$VM" vm stop --vm host-b.toml

say "runtime attestation: a verifier server, a host agent, a golden baseline from seq 3"
"$VM" serve --listen 127.0.0.1:0 --state-dir server --ready-file server.addr 2>server.log &
SERVER_PID=$!
for _ in $(seq 200); do [ -s server.addr ] && break; sleep 0.05; done
URL=http://$(cat server.addr)
echo "(vmattest serve on $URL: SQLite in server/, admin token in server/admin.token)"
sed -n 's/^ksym //p' guest-symbols.txt > System.map
load=$(sed -n 's/^kcode \([0-9a-f]*\)-.*/\1/p' guest-symbols.txt)
cat > policy.toml <<TOML
name = "guest-kernel"
hash = "sha256"
kernel_load = 0x$load

[jump_table]
symbols = ["__start___jump_table", "__stop___jump_table"]

[static_calls]
sites = ["__start_static_call_sites", "__stop_static_call_sites"]
trampolines = ["__static_call_text_start", "__static_call_text_end"]

[[region]]
name = "kernel-text"
symbols = ["_stext", "_etext"]
weight = 10
critical = true
kernel_code = true

[[region]]
name = "rodata"
symbols = ["__start_rodata", "__end_rodata"]
weight = 2
sample = 64
TOML
cat policy.toml
echo '$ vmattest policy resolve --policy policy.toml --system-map System.map > resolved.toml'
"$VM" policy resolve --policy policy.toml --system-map System.map > resolved.toml
R=("$VM" remote --server "$URL" --token-file server/admin.token)
run "$VM" keygen --alg ed25519 --out agent.key
run "${R[@]}" host add --name host-a --pubkey agent.key.pub
policy_id=$("${R[@]}" --json policy add --policy resolved.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
run "${R[@]}" vm add --name demo --host host-a --policy-id "$policy_id" --subset all --threshold 90 --on-alert rollback
run "${R[@]}" baseline --vm demo --store chain --seq 3 --policy resolved.toml --pubkey host.key.pub
"${R[@]}" --json token --role agent --host host-a | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' > agent.token
AGENT=("$VM" agent --server "$URL" --token-file agent.token --key agent.key --vm demo.toml --once)
run "${AGENT[@]}"

say "an attacker patches one byte of kernel text through the guest's RAM file"
python3 - resolved.toml run-demo/ram <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r'name = "kernel-text"\nstart = (0x[0-9a-f]+)\nlen = (0x[0-9a-f]+)', text)
start, length = int(m.group(1), 16), int(m.group(2), 16)
with open(sys.argv[2], "r+b") as f:
    f.seek(start)
    code = f.read(length)
    at = start + code.index(b"\xcc" * 32) + 16   # int3 padding: never executed
    f.seek(at)
    f.write(b"\x90")
print(f"patched guest-physical {at:#x}")
PY
set +e
run "${AGENT[@]}" --store chain --pubkey host.key.pub
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "expected the agent to report an alert (exit 1), got $rc" >&2; exit 1; }
run "${R[@]}" alerts --vm demo
say "the agent rolled the guest back to the attested seq 3: its kernel passes again"
run "${AGENT[@]}"
run "$VM" vm stop --vm demo.toml
say "demo complete"
