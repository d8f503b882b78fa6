#!/usr/bin/env bash
# Checks the formatting (rustfmt.toml) and the lints (clippy, warnings are errors), builds corral
# and runs every test of the workspace as root, with the local test registries and images
# started for the run and stopped afterwards.
#
#   hack/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/test.sh: the integration tests need root" >&2
    exit 1
fi

hack/install-deps.sh
# Style and lints first: they fail in seconds, the tests take minutes.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets

envdir=$(mktemp -d /tmp/corral-test-env.XXXXXX)
trap 'hack/test-env.sh stop "$envdir" || true' EXIT
hack/test-env.sh start "$envdir" >/dev/null
# shellcheck disable=SC1091
. "$envdir/env"

cargo test --workspace "$@"
