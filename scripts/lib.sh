# Shared helpers for the project's scripts (sourced, not run).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}
export VMATTEST_CACHE=$CACHE

# Installs system and Python test dependencies (as root, or through sudo).
ensure_deps() {
  if [ "$(id -u)" -eq 0 ]; then
    "$ROOT/scripts/install-deps.sh"
  elif command -v sudo >/dev/null; then
    sudo VMATTEST_CACHE="$CACHE" "$ROOT/scripts/install-deps.sh"
  else
    "$ROOT/scripts/install-deps.sh"
  fi
  command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (1.89 or newer)" >&2; exit 2; }
}

# Builds the release binary and prints its path.
build_release() {
  (cd "$ROOT" && cargo build --release --quiet -p vmattest-cli --features tpm,libvirt) >&2
  echo "$ROOT/target/release/vmattest"
}
