#!/usr/bin/env bash
# Install what vmattest's demo and test suite need on Debian bookworm. Idempotent; run as root.
# Everything comes from Debian's archive and PyPI; nothing is downloaded from elsewhere.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(b3sum cryptsetup-bin xdelta3 zstd openssl pkg-config python3 python3-venv bc
      busybox-static cpio swtpm swtpm-tools tpm2-tools libtss2-dev
      e2fsprogs postgresql iproute2 mmdebstrap)  # debugfs reads package lists from disk images; tests start private PostgreSQL clusters; the package test installs into a root mmdebstrap makes
# QEMU 10 (mapped-ram, file: migration URIs) comes from bookworm-backports; bookworm's own 7.2
# conflicts with the qemu-utils 10 some hosts already carry.
# libvirt 11.3 too (tests start private session daemons); bookworm's 9.0 passes -no-acpi, which
# QEMU 10 refuses.
BPO_PKGS=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-log
          libvirt-clients libvirt-dev)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
bpo_missing=()
for p in "${BPO_PKGS[@]}"; do
  installed "$p" && [[ $(dpkg-query -W -f='${Version}' "$p") == *bpo12* ]] || bpo_missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#bpo_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]} ${bpo_missing[*]}" >&2
    exit 2
  fi
  if [ ${#bpo_missing[@]} -gt 0 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # Reuse the mirror apt is already configured with.
    mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || { echo "install-deps: no Debian mirror configured for apt" >&2; exit 2; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" > /etc/apt/sources.list.d/vmattest-backports.sources
  fi
  apt-get update -qq
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # systemd-container from bookworm: otherwise backports' libvirt pulls a newer systemd.
  [ ${#bpo_missing[@]} -eq 0 ] ||
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold \
      -t bookworm-backports "${bpo_missing[@]}" systemd-container/bookworm >/dev/null
fi

# Test oracles: an independent ML-DSA implementation, and two JWT libraries that fetch the
# server's JWKS (PyJWT's PyJWKClient for legacy EdDSA names, joserfc for RFC 9864 names).
CACHE=${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}
VENV=$CACHE/venv
ORACLES=('dilithium-py==1.4.0' 'PyJWT[crypto]==2.10.1' 'joserfc==1.5.0')
if [ ! -x "$VENV/bin/python" ] ||
   ! "$VENV/bin/python" -c 'import dilithium_py, jwt, joserfc; assert jwt.__version__ == "2.10.1"' 2>/dev/null; then
  mkdir -p "$CACHE"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${ORACLES[@]}"
fi
