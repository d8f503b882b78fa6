#!/usr/bin/env bash
# Builds corral-shim for deployment: size-tuned profile (LTO, panic=abort), static and non-PIE,
# which takes its resident memory per container from about 2.6 MiB to about 1.7 MiB. Prints the
# binary's path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
arch=$(uname -m)
target="$arch-unknown-linux-gnu"
# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-C relocation-model=static -C target-feature=+crt-static" \
    cargo build --quiet --profile shim -p shim --target "$target" >&2
echo "$PWD/target/$target/shim/corral-shim"
