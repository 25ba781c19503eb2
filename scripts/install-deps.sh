#!/usr/bin/env bash
# Install what vmattest's demo and test suite need on Debian bookworm. Idempotent; run as root.
# Everything comes from Debian's archive and PyPI; nothing is downloaded from elsewhere.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS=(b3sum cryptsetup-bin xdelta3 zstd openssl pkg-config python3 python3-venv bc)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 2
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# An independent ML-DSA implementation, used only as a test oracle.
CACHE=${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}
VENV=$CACHE/venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import dilithium_py' 2>/dev/null; then
  mkdir -p "$CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'dilithium-py==1.4.0'
fi
