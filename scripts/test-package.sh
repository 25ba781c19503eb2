#!/usr/bin/env bash
# The package as an operator gets it: built (scripts/package.sh), its systemd units checked by
# `systemd-analyze verify`, installed with `dpkg -i` into a fresh Debian bookworm root made by
# mmdebstrap, where `vmattest --version` must list the tpm and libvirt features and the default
# host daemon config must pass `hostd --check`. Needs root (mmdebstrap, chroot).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "test-package: needs root (mmdebstrap and chroot)" >&2; exit 2; }
deb=$("$ROOT/scripts/package.sh")
fail() { echo "test-package: $*" >&2; exit 1; }

# The root holds the package's dependencies beforehand, so that dpkg -i alone installs it.
depends=$(dpkg-deb -f "$deb" Depends)
# systemd too, so that the units' own dependencies (sysinit.target, ...) resolve in the root.
include=$( (tr ',' '\n' <<<"$depends"; echo systemd) | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep -v '^$' | paste -sd, -)
mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || fail "no Debian mirror configured for apt"
key=$(printf '%s' "$include" | sha256sum | cut -c1-16)
tarball=$CACHE/bookworm-root-$key.tar
if [ ! -s "$tarball" ]; then
  mkdir -p "$CACHE"
  mmdebstrap --quiet --variant=minbase --format=tar --include="$include" bookworm "$tarball.tmp" "$mirror" >&2
  mv "$tarball.tmp" "$tarball"
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
tar -C "$root" -xf "$tarball"
cp "$deb" "$root/tmp/vmattest.deb"
chroot "$root" dpkg -i /tmp/vmattest.deb >/dev/null
version=$(chroot "$root" vmattest --version)
[[ $version == *"features: tpm, libvirt"* ]] || fail "vmattest --version in the root says: $version"
chroot "$root" vmattest hostd --check --config /etc/vmattest/host.toml >/dev/null
for f in /etc/vmattest/host.toml /etc/vmattest/server.env; do
  [ "$(stat -c %a "$root$f")" = 600 ] || fail "$f: expected mode 600"
done
for f in /usr/share/bash-completion/completions/vmattest /usr/share/zsh/vendor-completions/_vmattest \
         /usr/share/fish/vendor_completions.d/vmattest.fish /usr/share/man/man1/vmattest-hostd.1.gz; do
  [ -s "$root$f" ] || fail "$f missing from the package"
done
# The units, offline, against the installed root (the binary they start is there). The man
# pages of Documentation= are checked above: systemd-analyze would ask the host's man.
for u in vmattest-server vmattest-hostd; do
  out=$(systemd-analyze verify --man=no --root="$root" "/lib/systemd/system/$u.service" 2>&1) ||
    fail "systemd-analyze verify $u: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $u: $out"
done
chroot "$root" dpkg -r vmattest >/dev/null
echo "package ok: $(basename "$deb"), $version"
