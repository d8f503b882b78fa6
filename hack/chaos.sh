#!/usr/bin/env bash
# Chaos run: pod cycles from parallel workers while corrald is killed with SIGKILL at random
# moments, then a check that no pod or container was lost and nothing leaked (tests/tests/chaos.rs),
# with release binaries. Long; not part of hack/test.sh (which runs a small version).
#
#   sudo hack/chaos.sh            # 1,000 cycles (4 workers x 250), 100 kills
#   CYCLES=50 WORKERS=2 KILLS=10 sudo hack/chaos.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/chaos.sh: needs root" >&2
    exit 1
fi
WORKERS=${WORKERS:-4}
CYCLES=${CYCLES:-250}
KILLS=${KILLS:-100}
KILL_MS=${KILL_MS:-900}

hack/install-deps.sh
cargo build --release --bins
cargo build -p tests --tests

envdir=$(mktemp -d /tmp/corral-chaos-env.XXXXXX)
trap 'hack/test-env.sh stop "$envdir" || true' EXIT
hack/test-env.sh start "$envdir" >/dev/null
# shellcheck disable=SC1091
. "$envdir/env"

CORRALD="$PWD/target/release/corrald" CHAOS_WORKERS=$WORKERS CHAOS_CYCLES=$CYCLES \
    CHAOS_KILLS=$KILLS CHAOS_KILL_MS=$KILL_MS \
    cargo test -p tests --test chaos -- --nocapture --test-threads 1
