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

# Installs what is needed, builds the release binary and the test guest: sets VM (the binary)
# and GUEST (the guest's kernel and initramfs directory).
prepare_guest() {
  ensure_deps
  VM=$(build_release)
  "$ROOT/scripts/build-guest.sh" >/dev/null
  GUEST=$CACHE/guest
}

# Prints the head of a VM spec for the test guest (set GUEST first):
#   guest_spec NAME MEMORY_MIB ACCEL RUN_DIR [EXTRA KERNEL ARGUMENTS]
guest_spec() {
  cat <<TOML
name = "$1"
memory_mib = $2
vcpus = 1
accel = "$3"
run_dir = "$4"

[boot]
kernel = "$GUEST/vmlinuz"
initrd = "$GUEST/initramfs.cpio.gz"
cmdline = "console=ttyS0 quiet panic=-1${5:+ $5}"
TOML
}
