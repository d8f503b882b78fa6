#!/usr/bin/env bash
# Checks the formatting (rustfmt.toml) and the lints (clippy, warnings are errors), builds corral
# and runs every test of the workspace as root, with the local test registries and images
# started for the run and stopped afterwards. Then runs the cgroup integration tests again in two
# cgroup v2 guests (hack/vm): the cgroupfs driver with a small init as PID 1, and the systemd
# driver with systemd as PID 1. A guest that fails, or cannot start, fails the run.
#
#   hack/test.sh [cargo test args...] [-- test args...]   (test args also go to the guest runs)
#
# CORRAL_SKIP_GUEST=1 leaves the guests out, for local iteration only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/test.sh: the integration tests need root" >&2
    exit 1
fi

hack/install-deps.sh
# The cgroup v2 guest's qemu and kernel (cached): a guest that cannot be had fails here, early.
if [ "${CORRAL_SKIP_GUEST:-}" != 1 ]; then hack/vm/run.sh --setup; fi
# Style and lints first: they fail in seconds, the tests take minutes.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets

envdir=$(mktemp -d /tmp/corral-test-env.XXXXXX)
trap 'hack/test-env.sh stop "$envdir" || true' EXIT
hack/test-env.sh start "$envdir" >/dev/null
# shellcheck disable=SC1091
. "$envdir/env"

# A host failure still lets the guests run (their results tell more); the run fails at the end.
host_rc=0
cargo test --workspace "$@" || host_rc=$?
host_failed() {
    if [ "$host_rc" != 0 ]; then
        echo "hack/test.sh: FAILED on the host: cargo test exit status $host_rc" >&2
        exit 1
    fi
}

# ---- cgroup v2 guests ---------------------------------------------------------------------------
# The test targets of tests/ run again in the guests (the host here is cgroup v1).
guest_targets=(pods cgroups)

if [ "${CORRAL_SKIP_GUEST:-}" = 1 ]; then
    cat >&2 <<'EOF'
hack/test.sh: ########################################################################
hack/test.sh: WARNING: CORRAL_SKIP_GUEST=1: the cgroup v2 guest runs were SKIPPED.
hack/test.sh: Nothing ran on cgroup v2 or under systemd; CI never skips them.
hack/test.sh: ########################################################################
EOF
    host_failed
    exit 0
fi

# The args after `--` (test names, libtest flags) go to the guest runs too.
test_args=()
for ((i = 1; i <= $#; i++)); do
    if [ "${!i}" = -- ]; then
        test_args=("${@:i+1}")
        break
    fi
done

# The test executables that ran above (the same selection, so the same features: nothing is
# rebuilt); the guests run the host's files.
guest_bins=()
while IFS=$'\t' read -r name exe; do
    if [[ " ${guest_targets[*]} " == *" $name "* ]]; then guest_bins+=("$exe"); fi
done < <(cargo test --no-run --message-format=json --workspace |
    jq -r --arg manifest "$PWD/tests/Cargo.toml" \
        'select(.reason == "compiler-artifact" and .manifest_path == $manifest and .target.kind == ["test"])
         | [.target.name, .executable] | @tsv')
if [ ${#guest_bins[@]} -ne ${#guest_targets[@]} ]; then
    echo "hack/test.sh: expected test executables for ${guest_targets[*]}, got: ${guest_bins[*]:-none}" >&2
    host_failed
    exit 1
fi

guest_failed=()
guest_pass() { # guest_pass DRIVER PID1 [run.sh options]
    local driver=$1 pid1=$2 start rc
    shift 2
    echo
    echo "======================================================================================"
    echo "hack/test.sh: cgroup v2 guest, $driver driver, $pid1 as PID 1: ${guest_targets[*]}"
    echo "======================================================================================"
    start=$SECONDS
    set +e
    hack/vm/run.sh "$@" --mem 4096 --cpus 2 --timeout 900 --timing \
        --env CORRALD --env CARGO_TARGET_DIR --env RUST_BACKTRACE --env RUST_TEST_THREADS -- \
        hack/vm/guest-tests.sh "$driver" "${guest_bins[@]}" -- "${test_args[@]}"
    rc=$?
    set -e
    echo "hack/test.sh: guest pass ($driver driver): $((SECONDS - start)) s wall, exit status $rc"
    [ "$rc" = 0 ] || guest_failed+=("$driver (exit status $rc)")
}
guest_pass cgroupfs "a small init"
guest_pass systemd systemd --systemd

if [ ${#guest_failed[@]} -gt 0 ]; then
    echo "hack/test.sh: FAILED in the cgroup v2 guest: ${guest_failed[*]}" >&2
fi
host_failed
[ ${#guest_failed[@]} -eq 0 ]
