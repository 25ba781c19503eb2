#!/usr/bin/env bash
# Benchmark: how long a libvirt domain's guest is paused by a vmattest capture, against
# libvirt's own `virsh save` and `virsh snapshot-create-as --memspec ...,snapshot=external` of
# the same domain, in the same run, for 256 MiB and 1 GiB of guest RAM. Run as root.
#
#   scripts/bench-libvirt.sh       (MEMS="256 1024" DELTAS=5 GAP=2 REPS=3 to change)
#
# A private libvirtd (session mode, as the unprivileged user vmattest-test, everything in a
# temporary directory) runs the test guest under TCG with its RAM in a shared file on /dev/shm.
# vmattest's pause is stop -> cont as it reports it (median of DELTAS deltas, GAP s apart).
# libvirt's pauses are the wall time of each virsh command minus that of a no-op virsh call
# (`virsh domstate`), which leaves the command's own work: `save` keeps the guest stopped
# throughout (and leaves the domain shut off: it is restored before the next round);
# `snapshot-create-as` without --live pauses the guest while it writes memory, then resumes it.
# Then one rollback of the domain to its newest seq (`rollback`: from destroying the old QEMU to
# the new one running, as `snapshot restore --domain` reports it). Results also go to
# target/bench/libvirt.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "bench-libvirt: run as root (it starts a private libvirtd as another user)" >&2; exit 2; }
prepare_guest
MEMS=${MEMS:-256 1024}
DELTAS=${DELTAS:-5}
GAP=${GAP:-2}
REPS=${REPS:-3}
USER_NAME=vmattest-test
getent passwd "$USER_NAME" >/dev/null ||
  useradd -r -U -M -d /nonexistent -s /usr/sbin/nologin "$USER_NAME"

W=$(mktemp -d /tmp/vmattest-bench-lv.XXXXXX)
RAM=/dev/shm/$(basename "$W")
PID=
URI="qemu:///session?socket=$W/run/libvirt/libvirt-sock"
v() { virsh -q -c "$URI" "$@"; }
cleanup() {
  for d in $(v list --all --name 2>/dev/null); do v destroy "$d" >/dev/null 2>&1 || true; v undefine "$d" >/dev/null 2>&1 || true; done
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  for f in "$W"/run/libvirt/virtlogd.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$W" "$RAM"
}
trap cleanup EXIT
mkdir -p "$W"/{home,config/libvirt,cache,run,data,vm,store} "$RAM"
echo "memory_backing_dir = \"$RAM\"" > "$W/config/libvirt/qemu.conf"
echo "log_outputs = \"3:file:$W/libvirtd.log\"" > "$W/config/libvirt/libvirtd.conf"
cp "$GUEST/vmlinuz" "$GUEST/initramfs.cpio.gz" "$W/vm/"
chown -R "$USER_NAME:" "$W" "$RAM"
chmod 700 "$W/run"
(cd / && exec setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups -- env -i \
  PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$W/home" XDG_CONFIG_HOME="$W/config" \
  XDG_CACHE_HOME="$W/cache" XDG_RUNTIME_DIR="$W/run" XDG_DATA_HOME="$W/data" \
  /usr/sbin/libvirtd) &
PID=$!
for _ in $(seq 300); do v version >/dev/null 2>&1 && break; sleep 0.1; done
v version >/dev/null

"$VM" keygen --alg ed25519 --out "$W/key" >/dev/null
field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$1"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
# Wall time of a command, in ms.
timed() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }

results=()
for MEM in $MEMS; do
  N=bench$MEM
  truncate -s 64M "$W/vm/$N.raw"
  chown "$USER_NAME:" "$W/vm/$N.raw"
  cat > "$W/vm/$N.xml" <<XML
<domain type='qemu'>
  <name>$N</name>
  <memory unit='MiB'>$MEM</memory>
  <vcpu>1</vcpu>
  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$W/vm/vmlinuz</kernel>
    <initrd>$W/vm/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$W/vm/$N.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$W/vm/$N.console'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  v define "$W/vm/$N.xml" >/dev/null
  v start "$N" >/dev/null
  for _ in $(seq 1800); do grep -q READY "$W/vm/$N.console" 2>/dev/null && break; sleep 0.1; done
  grep -q READY "$W/vm/$N.console"
  S=$W/store/$N
  "$VM" snapshot init --store "$S" --vm-id "$N" --alg sha256 >/dev/null
  take() { "$VM" --json snapshot take --store "$S" --domain "$N" --connect "$URI" --key "$W/key"; }
  sleep "$GAP"
  base_down=$(take | field downtime_ms)
  downs=()
  for _ in $(seq "$DELTAS"); do
    sleep "$GAP"
    downs+=("$(take | field downtime_ms)")
  done
  ours=$(median "${downs[@]}")
  # A rollback to the newest seq: verify, rebuild, new QEMU started by libvirt, RAM in, resume.
  rb=$("$VM" --json snapshot restore --store "$S" --pubkey "$W/key.pub" --domain "$N" --connect "$URI")
  rb_rebuild=$(echo "$rb" | field rebuild_ms); rb_switch=$(echo "$rb" | field switch_ms)
  sleep "$GAP"
  noops=(); snaps=(); saves=(); restores=()
  for i in $(seq "$REPS"); do
    noops+=("$(timed v domstate "$N")")
    sleep 1
    snaps+=("$(timed v snapshot-create-as "$N" "s$i" --no-metadata \
      --memspec "file=$W/vm/$N-s$i.mem,snapshot=external" --diskspec vda,snapshot=no)")
    rm -f "$W/vm/$N-s$i.mem"
    sleep 1
    saves+=("$(timed v save "$N" "$W/vm/$N.save")")
    restores+=("$(timed v restore "$W/vm/$N.save")")
    rm -f "$W/vm/$N.save"
  done
  noop=$(median "${noops[@]}"); snap=$(median "${snaps[@]}")
  save=$(median "${saves[@]}"); restore=$(median "${restores[@]}")
  v destroy "$N" >/dev/null
  python3 - "$MEM" "$ours" "$base_down" "$noop" "$snap" "$save" "$restore" "$rb_rebuild" "$rb_switch" <<'PY' > "$W/$N.json"
import json, sys
mem, ours, base, noop, snap, save, restore, rb_rebuild, rb_switch = sys.argv[1:]
ours, base, noop, snap, save, restore = (float(x) for x in (ours, base, noop, snap, save, restore))
snap_pause, save_pause = max(snap - noop, 1.0), max(save - noop, 1.0)
print(json.dumps({"memory_mib": int(mem), "vmattest_delta_pause_ms": round(ours, 1),
  "vmattest_baseline_pause_ms": round(base, 1), "virsh_noop_ms": round(noop, 1),
  "virsh_snapshot_external_pause_ms": round(snap_pause, 1), "virsh_save_pause_ms": round(save_pause, 1),
  "virsh_restore_ms": round(restore, 1), "vmattest_rollback_rebuild_ms": round(float(rb_rebuild), 1),
  "vmattest_rollback_switch_ms": round(float(rb_switch), 1), "ratio_delta_vs_save": round(ours / save_pause, 3),
  "ratio_delta_vs_snapshot": round(ours / snap_pause, 3)}))
PY
  results+=("$(cat "$W/$N.json")")
done

echo "guest pause of a libvirt domain (TCG): vmattest capture (median of $DELTAS deltas, ${GAP}s apart) vs virsh (median of $REPS, minus a no-op virsh call)"
printf '%-6s %10s %10s %14s %10s %10s %12s %9s %9s\n' MiB "delta ms" "base ms" "snapshot-ext" "save" "restore" "rollback" "/save" "/snapshot"
for r in "${results[@]}"; do
  echo "$r" | python3 -c 'import json,sys
r = json.load(sys.stdin)
print("%-6d %10.1f %10.1f %14.1f %10.1f %10.1f %12.1f %9.3f %9.3f" % (r["memory_mib"], r["vmattest_delta_pause_ms"],
  r["vmattest_baseline_pause_ms"], r["virsh_snapshot_external_pause_ms"], r["virsh_save_pause_ms"],
  r["virsh_restore_ms"], r["vmattest_rollback_switch_ms"], r["ratio_delta_vs_save"], r["ratio_delta_vs_snapshot"]))'
done
echo "target: delta pause <= 0.3x virsh save's"
mkdir -p "$ROOT/target/bench"
printf '[%s]\n' "$(IFS=,; echo "${results[*]}")" > "$ROOT/target/bench/libvirt.json"
