#!/usr/bin/env bash
# Regenerates the committed seed corpora of the fuzz targets (fuzz/seeds/<target>/) from real
# outputs: the release `vmattest` binary writes keys, records, proofs, chains, bundles, config
# statements, openings and disclosures, resolved policies; a private swtpm gives TPM quotes,
# certifications and sealed blobs; fuzz/seedgen encodes evidence, reports and API request
# bodies with the project's own types. Small inputs only: every seed is at most 64 KiB.
#
#   scripts/fuzz-seeds.sh
#
# Needs swtpm and libtss2 (scripts/install-deps.sh installs them). Keys are fresh each run, so
# every signed seed changes; the targets embed the public keys from fuzz/seeds/keys/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

BIN=$(build_release)
SEEDS=$ROOT/fuzz/seeds
W=$(mktemp -d)
TPM_PID=
cleanup() {
  if [ -n "$TPM_PID" ]; then kill "$TPM_PID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT

v() { "$BIN" "$@" >/dev/null; }
# The object a signed object (kind 2) carries: bytes32 right after the 16-byte header.
inner() { python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); n=int.from_bytes(d[16:20],"big"); sys.stdout.buffer.write(d[20:20+n])' "$1"; }
# A selector byte (decimal) and then a file: for targets whose first byte picks the decoder.
sel() { printf "\\$(printf '%03o' "$1")"; cat "$2"; }
seed() { mkdir -p "$SEEDS/$1"; cp "$2" "$SEEDS/$1/$3"; }

rm -rf "$SEEDS"
mkdir -p "$SEEDS/keys"

# Deterministic images: 3 pages and a partial page, one short page, one page of zeros.
python3 - "$W" <<'EOF'
import sys, os
w = sys.argv[1]
open(os.path.join(w, "img"), "wb").write(bytes((i * 7 + i // 4096) % 251 for i in range(3 * 4096 + 100)))
open(os.path.join(w, "small"), "wb").write(b"small image\n" * 8)
open(os.path.join(w, "zero"), "wb").write(bytes(4096))
open(os.path.join(w, "ram"), "wb").write(bytes((i * 13) % 256 for i in range(8 * 4096)))
open(os.path.join(w, "disk"), "wb").write(bytes((i * 3) % 256 for i in range(4 * 4096)))
EOF

# Keys of every algorithm; their public halves are embedded in the targets.
# Secret-key seeds come from throwaway keys that sign nothing.
mkdir -p "$W/keys" "$W/throwaway" "$SEEDS/pem"
for alg in ed25519 p384 ml-dsa-65 hybrid; do
  v keygen --alg "$alg" --out "$W/keys/$alg"
  cp "$W/keys/$alg.pub" "$SEEDS/keys/$alg.pub"
  sel 0 "$W/keys/$alg.pub" > "$SEEDS/pem/public-$alg"
  v keygen --alg "$alg" --out "$W/throwaway/$alg"
  sel 1 "$W/throwaway/$alg" > "$SEEDS/pem/secret-$alg"
done

# Measurement records, signed by each algorithm, by two keys, with salt and nonce.
for alg in ed25519 p384 ml-dsa-65 hybrid; do
  v sign "$W/img" --key "$W/keys/$alg" --out "$W/rec-$alg"
  seed record "$W/rec-$alg" "signed-$alg"
done
v sign "$W/img" "$W/small" "$W/zero" --alg sha256 --salt 00ff --nonce 0123456789abcdef \
  --key "$W/keys/ed25519" --key "$W/keys/p384" --out "$W/rec-two"
v sign "$W/small" --alg sha384 --key "$W/keys/ed25519" --out "$W/rec-384"
seed record "$W/rec-two" signed-two-keys
seed record "$W/rec-384" signed-sha384
inner "$W/rec-two" > "$W/rec-two.inner"
seed record "$W/rec-two.inner" record-three-images
inner "$W/rec-ed25519" > "$W/rec-one.inner"
seed record "$W/rec-one.inner" record-one-image

# Page proofs of every tree algorithm, single pages and ranges, partial last page.
v prove "$W/img" --page 1 --out "$W/p1"
v prove "$W/img" --page 2 --count 2 --out "$W/p2"
v prove "$W/img" --page 0 --count 4 --alg sha256 --salt abcd --out "$W/p3"
v prove "$W/img" --page 3 --alg sha384 --out "$W/p4"
v prove "$W/small" --page 0 --out "$W/p5"
for p in p1 p2 p3 p4 p5; do seed proof "$W/$p" "$p"; done

# Snapshot chains: BLAKE3 plain and SHA-256 encrypted; baseline and deltas, then a bundle.
S=$W/store
v snapshot init --store "$S" --vm-id web1
v snapshot take --store "$S" --key "$W/keys/ed25519" --memory "ram=$W/ram" --disk "disk0=$W/disk" --config "config=$W/small"
printf 'changed' | dd of="$W/ram" bs=1 seek=5000 conv=notrunc status=none
v snapshot take --store "$S" --key "$W/keys/ed25519" --memory "ram=$W/ram" --disk "disk0=$W/disk" --config "config=$W/small"
head -c 4096 /dev/zero | dd of="$W/disk" bs=4096 seek=2 conv=notrunc status=none
v snapshot take --store "$S" --key "$W/keys/ed25519" --memory "ram=$W/ram" --disk "disk0=$W/disk" --config "config=$W/small"
v snapshot export --store "$S" --out "$W/chain.bundle"
v snapshot export --store "$S" --from 2 --out "$W/tail.bundle"
E=$W/estore
v snapshot init --store "$E" --vm-id web2 --alg sha256 --salt 0011 --secret "$W/secret"
v snapshot take --store "$E" --key "$W/keys/hybrid" --key "$W/keys/p384" --memory "ram=$W/ram" --secret "$W/secret"
v snapshot take --store "$E" --key "$W/keys/hybrid" --key "$W/keys/p384" --memory "ram=$W/ram" --secret "$W/secret"
v snapshot export --store "$E" --out "$W/enc.bundle"
for st in store estore; do
  for l in "$W/$st"/links/*.link; do
    n=$(basename "$l" .link); n=$((10#$n))
    seed link "$l" "signed-$st-$n"
    inner "$l" > "$W/$st-$n.inner"
    seed link "$W/$st-$n.inner" "link-$st-$n"
  done
  for o in "$W/$st"/objects/*/*; do
    kind=$(python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); print(int.from_bytes(d[8:10],"big"))' "$o")
    [ "$kind" = 4 ] && seed manifest "$o" "$st-$(basename "$o" | head -c 12)"
    # The batch target's first byte: 0 expects the length the batch claims.
    if [ "$kind" = 6 ] && [ "$st" = store ]; then
      sel 0 "$o" > "$W/batch.sel"; seed batch "$W/batch.sel" "$st-$(basename "$o" | head -c 12)"
    fi
  done
  sel 1 "$W/$st/store.json" > "$W/$st.meta"; seed store_files "$W/$st.meta" "store-json-$st"
done
sel 0 "$W/secret" > "$W/secret.sel"; seed store_files "$W/secret.sel" secret
cp "$W/store/links/00000000000000000002.link" "$W/chain.link"
for o in "$W/store"/objects/*/*; do
  if python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); sys.exit(0 if d[8:10]==b"\0\4" and b"web1" in d and int.from_bytes(d[24:32],"big")==2 else 1)' "$o"; then
    cp "$o" "$W/chain.manifest"
  fi
done
[ -f "$W/chain.manifest" ] || cp "$(ls "$W"/store/objects/*/* | head -n 1)" "$W/chain.manifest"
# The bundle target's first byte: 0 reads the bundle as it is, 1 recomputes its trailer.
for b in chain enc; do sel 0 "$W/$b.bundle" > "$W/$b.sel"; seed bundle "$W/$b.sel" "$b"; done
sel 1 "$W/tail.bundle" > "$W/tail.sel"; seed bundle "$W/tail.sel" tail
# A pruned copy: its signed rebase, the rebase inside it, and a bundle that opens with it.
cp -a "$S" "$W/pstore"
v snapshot prune --store "$W/pstore" --pubkey "$W/keys/ed25519.pub" --key "$W/keys/ed25519" --keep 2
seed link "$W/pstore/links/00000000000000000001.rebase" signed-rebase
inner "$W/pstore/links/00000000000000000001.rebase" > "$W/rebase.inner"
seed link "$W/rebase.inner" rebase
v snapshot export --store "$W/pstore" --from 1 --out "$W/pruned.bundle"
sel 0 "$W/pruned.bundle" > "$W/pruned.sel"; seed bundle "$W/pruned.sel" pruned

# VM specs (also the config measurement's input) and libvirt domain XML over small files.
mkdir -p "$W/vm"
cp "$W/small" "$W/vm/vmlinuz"; cp "$W/zero" "$W/vm/initrd.img"; cp "$W/disk" "$W/vm/disk0.raw"
cat > "$W/vm/web1.toml" <<'EOF'
name = "web1"
memory_mib = 1024
vcpus = 2
accel = "tcg"
run_dir = "run"
[boot]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 root=/dev/vda"
[[disk]]
name = "disk0"
path = "disk0.raw"
format = "raw"
[[nic]]
mac = "52:54:00:12:34:56"
EOF
cat > "$W/vm/disk-boot.toml" <<'EOF'
name = "db.2"
memory_mib = 256
machine = "q35"
qemu = "/opt/qemu/bin/qemu-system-x86_64"
[boot]
disk = "sys"
[[disk]]
name = "sys"
path = "sys.qcow2"
format = "qcow2"
[[disk]]
name = "data"
path = "/srv/data.raw"
[[nic]]
mac = "52:54:00:00:00:01"
[[nic]]
mac = "52:54:00:00:00:02"
EOF
printf 'name = "min"\nmemory_mib = 16\n[boot]\nkernel = "k"\n' > "$W/vm/min.toml"
for s in web1 disk-boot min; do seed vm_spec "$W/vm/$s.toml" "$s.toml"; done

mkdir -p "$W/fix"
python3 - "$W/fix" <<'EOF'
import sys, os
for name, n in [("vmlinuz", 5000), ("initrd.img", 300), ("OVMF_CODE.fd", 4096), ("OVMF_VARS.fd", 4096),
                ("db-2_VARS.fd", 4096), ("root.img", 8192), ("data.img", 4096 * 3 + 17), ("system.img", 4096)]:
    open(os.path.join(sys.argv[1], name), "wb").write(bytes(i * 7 % 251 for i in range(n)))
EOF
# The repository's libvirt fixtures, every host path under the fuzz targets' fixture directory
# (qcow2 disks become raw: a qcow2 disk runs qemu-img, which the target does not allow).
for x in kernel-boot uefi-disk-boot; do
  sed -e 's#/usr/bin/qemu-system-x86_64#@DIR@/qemu-system-x86_64#' -e "s#system.qcow2#system.img#" \
      -e "s#type='qcow2'#type='raw'#" "crates/vmconfig/tests/data/$x.xml" > "$W/$x.xml.in"
  sed "s#@DIR@#$W/fix#g" "$W/$x.xml.in" > "$W/$x.xml"
  sed "s#@DIR@#/tmp/vmattest-fuzz#g" "$W/$x.xml.in" > "$W/$x.seed.xml"
  seed libvirt "$W/$x.seed.xml" "$x.xml"
done

# Packages: a manifest, the repository's dpkg status fixture.
printf 'base-files 12.4+deb12u5\nlibc6 2.36-9+deb12u4\nlibstdc++6 12.2.0-14\nopenssl 3.0.11-1~deb12u2\n' > "$W/packages"
sel 0 "$W/packages" > "$W/packages.sel"; seed packages "$W/packages.sel" manifest
sel 1 crates/vmconfig/tests/data/dpkg-status > "$W/status.sel"; seed packages "$W/status.sel" dpkg-status

# Config statements, openings and disclosures from a spec and from domain XML.
v config measure --vm "$W/vm/web1.toml" --packages "$W/packages" --key "$W/keys/ed25519" --out "$W/cfg"
v config measure --libvirt "$W/kernel-boot.xml" --name web-1 --key "$W/keys/hybrid" --out "$W/cfgx"
for c in cfg cfgx; do
  seed config_statement "$W/$c/config.statement" "signed-$c"
  inner "$W/$c/config.statement" > "$W/$c.stmt"
  seed config_statement "$W/$c.stmt" "statement-$c"
  seed config_opening "$W/$c/config.opening" "$c"
done
for p in memory_mib vcpus cmdline package.openssl packages.sha256; do
  v config disclose "$W/cfg" --param "$p" --out "$W/d-$p"
  seed config_disclosure "$W/d-$p" "$p"
done
v config disclose "$W/cfgx" --param nic.0.vlan --out "$W/d-vlan"
seed config_disclosure "$W/d-vlan" nic.0.vlan

# A reference configuration that the measured configuration meets.
cat > "$W/reference.toml" <<'EOF'
strict = false
[expect]
cmdline = "console=ttyS0 root=/dev/vda"
"nic.0.mac" = "52:54:00:12:34:56"
[range]
memory_mib = [512, 4096]
vcpus = ["1", 4]
[set]
machine = ["pc", "q35"]
"package.openssl" = ["3.0.11-1~deb12u2", "3.0.13-1~deb12u1"]
[absent]
names = ["firmware.sha256", "nic.1.mac"]
EOF
v config check "$W/cfg" --reference "$W/reference.toml"
seed reference "$W/reference.toml" reference.toml
printf 'strict = true\n[expect]\nvcpus = 2\n[absent]\nnames = []\n' > "$W/strict.toml"
seed reference "$W/strict.toml" strict.toml

# Region policies: ranges, symbols resolved with a small System.map, subsets.
cat > "$W/System.map" <<'EOF'
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81e00000 T _etext
ffffffff82000000 D _sdata
ffffffff82200000 D sys_call_table
ffffffff82201000 D _edata
EOF
cat > "$W/policy.toml" <<'EOF'
name = "web-kernel"
hash = "sha256"
schedule_secs = 30
kernel_load = 0x1000000

[[region]]
name = "kernel-text"
symbols = ["_text", "_etext"]
weight = 10
critical = true
kernel_code = true
sample = 16

[[region]]
name = "syscalls"
symbols = ["sys_call_table", "_edata"]
weight = 5
critical = true

[[region]]
name = "low"
start = 0x9000
len = 0x3000
weight = 1

[[subset]]
id = "fast"
regions = ["syscalls", "low"]
EOF
"$BIN" policy resolve --policy "$W/policy.toml" --system-map "$W/System.map" > "$W/policy.resolved.toml"
printf 'name = "blake"\nhash = "blake3"\n[[region]]\nname = "r"\nstart = 0\nlen = 4096\n' > "$W/p2.toml"
"$BIN" policy resolve --policy "$W/p2.toml" > "$W/p2.resolved.toml"
{ cat "$W/policy.toml"; printf '\0'; cat "$W/System.map"; } > "$W/policy+map"
seed policy "$W/policy+map" with-system-map
seed policy "$W/policy.resolved.toml" resolved.toml
seed policy "$W/p2.resolved.toml" blake3.toml
seed system_map "$W/System.map" System.map

# TPM: a private swtpm gives the attestation key, a certified key, a quote and a sealed blob.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/tpmstate" "$W/tpm"
swtpm socket --tpm2 --server "type=tcp,port=$PORT,bindaddr=127.0.0.1" \
  --ctrl "type=tcp,port=$((PORT + 1)),bindaddr=127.0.0.1" \
  --flags not-need-init,startup-clear --tpmstate "dir=$W/tpmstate" &
TPM_PID=$!
export VMATTEST_TPM_TCTI="swtpm:host=127.0.0.1,port=$PORT"
for _ in $(seq 50); do "$BIN" tpm info >/dev/null 2>&1 && break; sleep 0.2; done
v tpm ak --out "$W/tpm/ak"
v tpm keygen --out "$W/tpm/key.pub"
v tpm quote --pcr 0,7,16 --nonce 00112233445566778899aabbccddeeff --out "$W/tpm/quote"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$W/tpm/secret"
v tpm seal --pcr 0,16 --in "$W/tpm/secret" --out "$W/tpm/blob"
cp "$W/tpm/ak" "$SEEDS/keys/ak.tpmt"
seed sealed_blob "$W/tpm/blob" blob
python3 - "$W/tpm" "$SEEDS/tpm_quote" <<'EOF'
import sys, os, json
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
q = json.load(open(os.path.join(src, "quote")))
c = json.load(open(os.path.join(src, "key.pub.certify")))
ak = open(os.path.join(src, "ak"), "rb").read()
seeds = {
    "attest-quote": b"\0" + bytes.fromhex(q["attest"]),
    "attest-certify": b"\0" + bytes.fromhex(c["attest"]),
    "public-ak": b"\1" + ak,
    "public-key": b"\1" + bytes.fromhex(c["key"]),
    "signature-quote": b"\2" + bytes.fromhex(q["signature"]),
    "signature-certify": b"\2" + bytes.fromhex(c["signature"]),
    "sec1-ek": b"\3" + bytes.fromhex(c["ek"]),
    "quote": b"\4" + bytes.fromhex(q["signature"]) + bytes.fromhex(q["attest"]),
    "certify": b"\4" + bytes.fromhex(c["signature"]) + bytes.fromhex(c["attest"]),
}
for name, data in seeds.items():
    open(os.path.join(out, name), "wb").write(data)
EOF
kill "$TPM_PID" 2>/dev/null || true
wait "$TPM_PID" 2>/dev/null || true
TPM_PID=

# Signature bytes for the signature target: alg selector, u16 length, signature, message.
python3 - "$W" "$SEEDS/signature" <<'EOF'
import sys, os
w, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
for i, alg in enumerate(["ed25519", "p384", "ml-dsa-65", "hybrid"]):
    d = open(os.path.join(w, "rec-" + alg), "rb").read()
    n = int.from_bytes(d[16:20], "big")
    obj = d[20:20 + n]
    p = 20 + n + 1  # signature count
    sig_len = int.from_bytes(d[p + 33:p + 37], "big")
    sig = d[p + 37:p + 37 + sig_len]
    msg = b"vmattest signature v1\0" + obj
    open(os.path.join(out, alg), "wb").write(bytes([i]) + sig_len.to_bytes(2, "big") + sig + msg)
EOF

# A background snapshot's migration stream (docs/FORMAT.md): configuration, two RAM blocks, a
# page, a zero page and a page of the second block in two parts, then device state.
python3 - "$SEEDS/qemu_stream" <<'EOF'
import os, struct, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
def name(s): return bytes([len(s)]) + s
def u32(v): return struct.pack(">I", v)
def u64(v): return struct.pack(">Q", v)
def page(b): return bytes((b ^ i) & 0xff for i in range(4096))
s = u32(0x5145564D) + u32(3)
s += b"\x07" + u32(13) + b"pc-i440fx-9.2"
s += b"\x05" + name(b"configuration/target-page-bits") + u32(1) + u32(12)
s += b"\x05" + name(b"configuration/capabilities") + u32(1) + u32(1) + name(b"background-snapshot")
s += b"\x01" + u32(2) + name(b"ram") + u32(0) + u32(4)
s += u64(3 * 4096 | 0x04) + name(b"pc.ram") + u64(8192) + name(b"pc.bios") + u64(4096)
s += u64(0x10) + b"\x7e" + u32(2)
s += b"\x02" + u32(2) + u64(0x08) + name(b"pc.ram") + page(1)
s += u64(4096 | 0x02 | 0x20) + b"\x00" + u64(0x10) + b"\x7e" + u32(2)
s += b"\x08" + struct.pack(">HH", 0x0b, 0)
s += b"\x03" + u32(2) + u64(0x08) + name(b"pc.bios") + page(2) + u64(0x10) + b"\x7e" + u32(2)
s += b"\x04" + b"device state" + b"\x00"
open(os.path.join(out, "background-snapshot"), "wb").write(s)
EOF

# Evidence, snapshot reports and API request bodies, from the project's own encoders.
(cd fuzz && cargo run --quiet --release -p vmattest-fuzz-seedgen --target-dir target/seedgen -- "$W" "$SEEDS")

# Every seed at most 64 KiB.
find "$SEEDS" -type f -size +64k -print -delete | sed 's/^/dropped (over 64 KiB): /' >&2
echo "seeds: $(find "$SEEDS" -type f | wc -l) files, $(du -sh "$SEEDS" | cut -f1) in fuzz/seeds"
