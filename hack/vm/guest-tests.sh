#!/usr/bin/env bash
# Runs corral's integration test executables inside the cgroup v2 guest of hack/vm/run.sh, with
# the test registries started in the guest (hack/test-env.sh) and the cgroup driver DRIVER:
#
#   hack/vm/run.sh -- hack/vm/guest-tests.sh cgroupfs BIN... [-- TEST ARGS...]
#   hack/vm/run.sh --systemd -- hack/vm/guest-tests.sh systemd BIN... [-- TEST ARGS...]
#
# BIN: test executables built on the host (`cargo test --no-run -p tests`; the guest runs the
# host's files); TEST ARGS go to each (a name filter, --test-threads, ...). Each runs in tests/,
# as under cargo, with CORRAL_TEST_CGROUP_DRIVER=DRIVER and CORRAL_TEST_REQUIRE_CGROUP_V2=1, and
# TMPDIR=/tmp (a guest tmpfs: the tests' and corrald's dirs need a real filesystem under their
# overlay upper dirs). Every executable runs even when one fails; the exit status is 1 then.
set -euo pipefail

die() { echo "guest-tests.sh: $*" >&2; exit 2; }
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 2 ] || usage
driver=$1
shift
case "$driver" in
    cgroupfs | systemd) ;;
    *) die "DRIVER is cgroupfs or systemd, not '$driver'" ;;
esac
bins=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    if [ ! -f "$1" ] || [ ! -x "$1" ]; then die "no test executable $1"; fi
    bins+=("$(realpath -- "$1")")
    shift
done
[ $# -eq 0 ] || shift
test_args=("$@")
[ ${#bins[@]} -gt 0 ] || usage

# Only in the guest, and only the guest this driver needs.
[ -n "${CORRAL_VM:-}" ] || die "runs inside the guest: hack/vm/run.sh [--systemd] -- $0 $driver ..."
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || die "/sys/fs/cgroup is not cgroup2"
pid1=$(cat /proc/1/comm)
if [ "$driver" = systemd ] && [ "$pid1" != systemd ]; then
    die "the systemd driver needs systemd as PID 1 (hack/vm/run.sh --systemd)"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The guest has no network: the gRPC clients must have been fetched on the host.
compgen -G "$repo/target/test-clients/*/.complete" >/dev/null ||
    die "no gRPC test clients in target/test-clients: run hack/install-test-clients.sh on the host first"
export TMPDIR=/tmp
envdir=$(mktemp -d /tmp/corral-guest-env.XXXXXX)
trap '"$repo/hack/test-env.sh" stop "$envdir" || true' EXIT
started=$SECONDS
"$repo/hack/test-env.sh" start "$envdir" >/dev/null
# shellcheck disable=SC1091
. "$envdir/env"
echo "guest-tests: registries $CORRAL_TEST_REGISTRY and $CORRAL_TEST_AUTH_REGISTRY ready in $((SECONDS - started)) s"
export CORRAL_TEST_CGROUP_DRIVER=$driver CORRAL_TEST_REQUIRE_CGROUP_V2=1
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

summary=()
failed=0
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    echo "guest-tests: ==== $name ($driver driver, PID 1 $pid1, kernel $(uname -r)) ${test_args[*]}"
    started=$SECONDS
    set +e
    (cd "$repo/tests" && exec "$bin" "${test_args[@]}")
    rc=$?
    set -e
    [ "$rc" = 0 ] || failed=1
    summary+=("$(printf '%-28s exit status %3d, %4d s' "$name" "$rc" $((SECONDS - started)))")
done
echo "guest-tests: ==== summary ($driver driver)"
printf 'guest-tests:   %s\n' "${summary[@]}"
exit "$failed"
