#!/usr/bin/env bash
# Builds the Debian package target/debian/vmattest_VERSION-1_ARCH.deb: the release binary
# (features tpm and libvirt), systemd units for the server and the host daemon, default
# configs in /etc/vmattest, bash/zsh/fish completions and man pages (docs/OPERATIONS.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
CARGO_DEB_VERSION=3.6.0
DEB_TOOL=$CACHE/cargo-deb-$CARGO_DEB_VERSION/bin/cargo-deb
if [ ! -x "$DEB_TOOL" ]; then
  # A packaging tool, built once per version and kept outside the repository.
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet \
    --root "$CACHE/cargo-deb-$CARGO_DEB_VERSION"
fi
bin=$(build_release)
assets=$ROOT/target/package-assets
rm -rf "$assets"
mkdir -p "$assets/completions" "$assets/man"
"$bin" completions bash > "$assets/completions/vmattest.bash"
"$bin" completions zsh > "$assets/completions/_vmattest"
"$bin" completions fish > "$assets/completions/vmattest.fish"
"$bin" manpages "$assets/man" > /dev/null
gzip -9n "$assets"/man/*.1
cd "$ROOT"
"$DEB_TOOL" --quiet -p vmattest-cli --no-build --strip --output target/debian/ >&2
ls -t target/debian/vmattest_*.deb | head -1
