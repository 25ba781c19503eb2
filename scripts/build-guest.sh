#!/usr/bin/env bash
# Builds the tiny Linux test guest used by the QEMU tests, into $VMATTEST_CACHE/guest/:
#   vmlinuz            the Debian kernel that linux-image-amd64 depends on (downloaded, never installed)
#   initramfs.cpio.gz  busybox-static, the virtio modules and an /init that prints its kernel
#                      symbols ("ksym ADDR T NAME", "kcode PHYS-RANGE"), READY, and then
#                      "tick N" on ttyS0 once a second; fill=MIB on the kernel command line
#                      makes it hold up to MIB MiB of random bytes first ("filled N MiB")
# Idempotent and fast on reruns: the kernel is fetched once, the initramfs is rebuilt only when its
# inputs change. Needs busybox-static and cpio (scripts/install-deps.sh); root only for apt-get update.
set -euo pipefail

CACHE=${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}
OUT=$CACHE/guest
BUSYBOX=/bin/busybox
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk dummy)
APPLETS=(sh mount insmod rmmod sleep cat dd echo printf grep wc)

die() { echo "build-guest: $*" >&2; exit 1; }

for tool in cpio gzip sha256sum apt-get apt-cache dpkg; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install busybox-static (scripts/install-deps.sh)"
# The dynamic busybox package would not run inside the initramfs, which has no libc.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked: install busybox-static"
fi

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9  # concurrent runs (parallel CI jobs sharing a cache) wait for each other

# ---- kernel and modules: fetched once ----
have_kernel() {
  [ -s "$OUT/vmlinuz" ] || return 1
  for m in "${MODULES[@]}"; do
    [ -f "$OUT/modules/$m.ko" ] || [ -f "$OUT/modules/$m.builtin" ] || return 1
  done
}

kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

fetch_kernel() {
  local pkg work kver dir m found
  pkg=$(kernel_package)
  if [ -z "$pkg" ]; then
    [ "$(id -u)" -eq 0 ] ||
      die "apt knows no linux-image-amd64: run 'apt-get update' as root, then rerun"
    apt-get update -qq
    pkg=$(kernel_package)
    [ -n "$pkg" ] || die "apt-cache finds no kernel package behind linux-image-amd64"
  fi
  work=$(mktemp -d "$OUT/.kernel.XXXXXX")
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  (cd "$work" && apt-get download "$pkg" >download.log 2>&1) ||
    { cat "$work/download.log" >&2; die "apt-get download $pkg failed"; }
  dpkg -x "$work"/*.deb "$work/root"
  kver=$(ls "$work/root/lib/modules")
  dir=$work/root/lib/modules/$kver
  rm -rf "$OUT/modules.new" && mkdir "$OUT/modules.new"
  for m in "${MODULES[@]}"; do
    found=$(find "$dir/kernel" -name "$m.ko*" | head -1)
    if [ -z "$found" ]; then
      grep -q "/$m.ko\$" "$dir/modules.builtin" 2>/dev/null || die "$pkg has no module $m"
      : >"$OUT/modules.new/$m.builtin"  # compiled into the kernel: nothing to load
      continue
    fi
    case $found in
      *.ko) cp "$found" "$OUT/modules.new/$m.ko" ;;
      *.ko.xz) xz -dc "$found" >"$OUT/modules.new/$m.ko" ;;
      *.ko.zst) zstd -qdc "$found" >"$OUT/modules.new/$m.ko" ;;
      *.ko.gz) gzip -dc "$found" >"$OUT/modules.new/$m.ko" ;;
      *) die "unexpected module file $found" ;;
    esac
  done
  cp "$work"/root/boot/vmlinuz-* "$OUT/vmlinuz.new"
  rm -rf "$OUT/modules" && mv "$OUT/modules.new" "$OUT/modules"
  mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
  echo "$pkg $kver" >"$OUT/kernel.version"
  rm -rf "$work"
  trap - EXIT
}

have_kernel || fetch_kernel

# ---- initramfs: rebuilt when /init, busybox or the modules change ----
read -r -d '' INIT <<'EOF' || true
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# As large as RAM allows: fill=MIB below keeps its bytes here.
mount -t tmpfs -o size=100% tmpfs /run
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko
done
# snapdirty=N on the kernel command line: rewrite N KiB of tmpfs every tick. flipkeys=N: every
# N ticks, flip the kernel's own code (the sched_schedstats static key, loading or unloading the
# dummy module, a tracepoint's first probe and the preemption mode, which retarget static
# calls), printing "flip K". fill=MIB: hold
# MIB MiB of random bytes in tmpfs from before READY on, so that benchmarks see populated RAM;
# "filled N MiB" says how much it could.
dirty=0
fill=0
flip=0
for word in $(cat /proc/cmdline); do
  case $word in
    snapdirty=*) dirty=${word#snapdirty=} ;;
    flipkeys=*) flip=${word#flipkeys=} ;;
    fill=*) fill=${word#fill=} ;;
  esac
done
case $dirty in '' | *[!0-9]*) dirty=0 ;; esac
case $fill in '' | *[!0-9]*) fill=0 ;; esac
case $flip in '' | *[!0-9]*) flip=0 ;; esac
# At most what the kernel can spare less 32 MiB: tmpfs pages cannot be reclaimed, and running
# out would kill init.
avail=0
while read -r key kib _; do
  [ "$key" = MemAvailable: ] && avail=$((kib / 1024))
done </proc/meminfo
[ "$fill" -le $((avail - 32)) ] || fill=$((avail > 32 ? avail - 32 : 0))
if [ "$fill" -gt 0 ]; then
  dd if=/dev/urandom of=/run/fill bs=1048576 count="$fill" 2>/dev/null
  echo "filled $(($(wc -c </run/fill) / 1048576)) MiB" >/dev/ttyS0
fi
# Kernel symbols and the physical load address, for region policies: Debian ships only a
# placeholder System.map, so the guest reports its own.
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
grep -E ' (_text|_stext|_etext|__start_rodata|__end_rodata|__start___jump_table|__stop___jump_table|__start_static_call_sites|__stop_static_call_sites|__static_call_text_start|__static_call_text_end|__static_call_return0|__SCK__tp_func_kmalloc|sys_call_table|idt_table)$' /proc/kallsyms |
  while read -r a t n; do echo "ksym $a $t $n"; done >/dev/ttyS0
grep 'Kernel code' /proc/iomem | while read -r range rest; do echo "kcode $range"; done >/dev/ttyS0
echo READY >/dev/ttyS0
i=0
while :; do
  i=$((i + 1))
  # The disk block first: once "tick N" is on the console, block N is on the disk.
  if [ -b /dev/vda ]; then
    printf 'disk tick %d\n' "$i" |
      dd of=/dev/vda bs=4096 count=1 seek=$((i % 256)) conv=sync,notrunc,fsync 2>/dev/null
  fi
  echo "tick $i" >/dev/ttyS0
  if [ "$dirty" -gt 0 ]; then
    dd if=/dev/urandom of=/run/dirty bs=1024 count="$dirty" 2>/dev/null
  fi
  if [ "$flip" -gt 0 ] && [ $((i % flip)) -eq 0 ]; then
    k=$(((i / flip) % 2))
    echo "$k" >/proc/sys/kernel/sched_schedstats
    if [ "$k" = 1 ]; then insmod /lib/modules/dummy.ko; else rmmod dummy; fi
    event=/sys/kernel/tracing/events/sched/sched_process_exec/enable
    [ -w $event ] && echo "$k" >$event
    if [ -w /sys/kernel/debug/sched/preempt ]; then
      if [ "$k" = 1 ]; then echo full; else echo voluntary; fi >/sys/kernel/debug/sched/preempt
    fi
    echo "flip $k" >/dev/ttyS0
  fi
  sleep 1
done
EOF

stamp=$(
  {
    printf '%s\n' "$INIT" "${APPLETS[*]}"
    sha256sum "$BUSYBOX" "$OUT"/modules/* | awk '{ print $1 }'
  } | sha256sum | awk '{ print $1 }'
)
if [ ! -s "$OUT/initramfs.cpio.gz" ] || [ "$(cat "$OUT/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
  root=$(mktemp -d "$OUT/.initramfs.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  mkdir -p "$root"/{bin,dev,proc,sys,run,lib/modules}
  cp "$BUSYBOX" "$root/bin/busybox"
  for a in "${APPLETS[@]}"; do ln -s busybox "$root/bin/$a"; done
  find "$OUT/modules" -name '*.ko' -exec cp {} "$root/lib/modules/" \;
  printf '%s\n' "$INIT" >"$root/init"
  chmod 755 "$root/init"
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    gzip -9n >"$OUT/initramfs.cpio.gz.new"
  mv "$OUT/initramfs.cpio.gz.new" "$OUT/initramfs.cpio.gz"
  echo "$stamp" >"$OUT/initramfs.stamp"
  rm -rf "$root"
  trap - EXIT
fi

echo "$OUT/vmlinuz"
echo "$OUT/initramfs.cpio.gz"
