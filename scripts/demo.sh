#!/usr/bin/env bash
# The end-to-end demo: measure images, sign, verify, tamper, detect, prove one page.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
VM=$(build_release)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s|$W/||g; s|$VM|vmattest|g"; "$@"; }

say "a VM-like memory image (64 MiB) and a disk image (16 MiB)"
python3 - "$W" <<'PY'
import os, sys
w = sys.argv[1]
for name, pages in (("mem.img", 16384), ("disk.img", 4096)):
    with open(os.path.join(w, name), "wb") as f:
        for i in range(pages):
            k = i % 4
            f.write(bytes(4096) if k == 0 else os.urandom(4096) if k == 1 else (b"vmattest %08d " % i) * 227 + bytes(4096 - 227 * 18))
PY
cd "$W"

say "measure: the BLAKE3 root is b3sum's, the SHA-256 root is veritysetup's"
run "$VM" measure mem.img disk.img
run b3sum mem.img
run "$VM" measure --alg sha256 --salt 5eed disk.img
veritysetup format --hash sha256 --salt 5eed disk.img disk.hash | grep 'Root hash'

say "a hybrid Ed25519 + ML-DSA-65 key; sign a record of both images"
run "$VM" keygen --alg hybrid --out host.key
run "$VM" sign --key host.key --out snap.rec mem.img disk.img
run "$VM" verify --check-images --pubkey host.key.pub snap.rec

say "prove one page of memory to someone who never sees the image"
run "$VM" prove --page 4242 --out page.proof mem.img
run "$VM" verify-proof --record snap.rec --pubkey host.key.pub page.proof

say "a snapshot chain: baseline, then two deltas of a changing guest"
run "$VM" snapshot init --store chain --vm-id demo-vm
run "$VM" snapshot take --store chain --key host.key --memory mem.img --disk disk.img
python3 - <<'PY'
import mmap, os
with open("mem.img", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
    for p in range(0, 16384, 97):          # about 1% of the pages
        m[p * 4096 + 100:p * 4096 + 108] = os.urandom(8)
PY
run "$VM" snapshot take --store chain --key host.key --memory mem.img --disk disk.img
cp mem.img mem-seq1.img
printf 'guest wrote this' | dd of=disk.img bs=1 seek=8192 conv=notrunc status=none
run "$VM" snapshot take --store chain --key host.key --memory mem.img --disk disk.img
run "$VM" snapshot log --store chain
run "$VM" snapshot verify --store chain --pubkey host.key.pub

say "roll back: restore seq 1, byte for byte"
run "$VM" snapshot restore --store chain --pubkey host.key.pub --seq 1 --out at-seq1
run cmp at-seq1/memory mem-seq1.img && echo "(seq 1 memory is byte-identical)"

say "migrate: export a bundle, import it on 'another host' (a second store), verify there"
run "$VM" snapshot export --store chain --out chain.bundle
run "$VM" snapshot import --store other-host --pubkey host.key.pub chain.bundle
run "$VM" snapshot verify --store other-host --pubkey host.key.pub

say "tamper with a stored page batch: verification names seq, component and pages"
victim=$(ls -S chain/objects/*/* | tail -1)
python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-5]^=1; open(p,'wb').write(b)" "$victim"
set +e
run "$VM" snapshot verify --store chain --pubkey host.key.pub
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "expected exit 1 for a tampered store, got $rc" >&2; exit 1; }
echo "(exit $rc: tampering detected)"

say "tamper: flip one byte of guest memory"
printf '\xff' | dd of=mem.img bs=1 seek=$((4242 * 4096 + 7)) conv=notrunc status=none
set +e
run "$VM" verify --check-images --pubkey host.key.pub snap.rec
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "expected exit 1 for a tampered image, got $rc" >&2; exit 1; }
echo "(exit $rc: tampering detected)"

say "tamper: flip one byte of the signed record"
python3 -c "import sys; b=bytearray(open('snap.rec','rb').read()); b[-20]^=1; open('snap.rec','wb').write(b)"
set +e
run "$VM" verify --pubkey host.key.pub snap.rec
rc=$?
set -e
[ "$rc" -ne 0 ] || { echo "expected a failure for a tampered record" >&2; exit 1; }
echo "(exit $rc: tampering detected)"
say "demo complete"
