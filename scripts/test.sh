#!/usr/bin/env bash
# The whole test suite: dependencies, formatting, lints, every test (with the real oracles).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_deps
"$ROOT/scripts/build-guest.sh" >/dev/null
cd "$ROOT"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The TPM backend links libtss2 only with its feature; check and test both builds.
cargo clippy -p vmattest-tpm -p vmattest-cli --all-targets --features vmattest-tpm/tpm,vmattest-cli/tpm --quiet -- -D warnings
# The crash tests drive hooks that exist only with `fault-injection`; release builds lack them,
# which the one test run without the feature checks.
cargo clippy -p vmattest-store -p vmattest-qemu -p vmattest-cli --all-targets --features vmattest-cli/fault-injection --quiet -- -D warnings
# libvirt domains (`--domain`) link libvirt only with their feature; the tests start private
# session daemons (crates/testkit/src/libvirt.rs).
cargo clippy -p vmattest-libvirt -p vmattest-host -p vmattest-cli --all-targets --features vmattest-cli/libvirt --quiet -- -D warnings
FEATURES=vmattest-cli/fault-injection,vmattest-cli/libvirt
# The 600-round run of a guest that patches its own code lasts over 10 minutes and mostly
# waits: it runs beside the rest of the suite, from the same build.
SOAK=a_guest_that_patches_its_own_code_stays_affirming_for_600_rounds
soak_bin=$(cargo test --workspace --release --features "$FEATURES" --no-run --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "runtime" and m.get("executable"):
        print(m["executable"])')
[ -x "$soak_bin" ] || { echo "test: no runtime test binary" >&2; exit 1; }
soak_log=$(mktemp "${TMPDIR:-/tmp}/vmattest-soak.XXXXXX")
(cd crates/cli && exec "$soak_bin" --exact "$SOAK") >"$soak_log" 2>&1 &
soak_pid=$!
cargo test --workspace --release --features "$FEATURES" -- --skip "$SOAK"
if ! wait "$soak_pid"; then
  cat "$soak_log" >&2
  echo "test: $SOAK failed" >&2
  exit 1
fi
tail -3 "$soak_log"
rm -f "$soak_log"
cargo test -p vmattest-cli --release --test snapshot regression_crash_hooks_are_not_in_default_builds
cargo test -p vmattest-tpm --release --features tpm
cargo test -p vmattest-cli --release --features tpm --test tpm --test host_attest

# Fuzzing: every target briefly (docs/FUZZING.md; scripts/fuzz.sh SECONDS for a longer run).
"$ROOT/scripts/fuzz.sh" 5

# The Debian package: built with cargo-deb, units verified, installed into a fresh root.
if [ "$(id -u)" -eq 0 ]; then
  "$ROOT/scripts/test-package.sh"
else
  sudo VMATTEST_CACHE="$CACHE" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" PATH="$PATH" "$ROOT/scripts/test-package.sh"
fi
