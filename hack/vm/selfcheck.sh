#!/usr/bin/env bash
# Checks the guest of hack/vm/run.sh from inside, one PASS or FAIL line a check, then
# "N passed, N failed"; exits non-zero when a check failed. From the project's root:
#
#   hack/vm/run.sh -- hack/vm/selfcheck.sh
#   hack/vm/run.sh --systemd -- hack/vm/selfcheck.sh    # also systemd as PID 1, D-Bus

# The sh -c scripts in single quotes expand in the shell that runs them.
# shellcheck disable=SC2016
set -uo pipefail

if [ -z "${CORRAL_VM:-}" ]; then
    echo "selfcheck.sh: runs inside the guest: hack/vm/run.sh [--systemd] -- $0" >&2
    exit 2
fi
hack=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
passed=0 failed=0
check() { # check NAME CMD [ARGS...]: PASS, or FAIL with the last lines of its output
    local name=$1 out rc start=$SECONDS
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        echo "PASS $name ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        echo "FAIL $name (exit status $rc, $((SECONDS - start)) s)"
        tail -n 20 <<<"$out" | sed 's/^/    /'
    fi
}

echo "kernel $(uname -r), PID 1 $(cat /proc/1/comm), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) MiB"

# ---- cgroup v2 ----

cgroup2_only() {
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "/sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"; return 1; }
    cat /proc/self/cgroup
    [ "$(wc -l </proc/self/cgroup)" = 1 ] && grep -q '^0::/' /proc/self/cgroup || return 1
    # No v1 hierarchy mounted, and none could be: every controller is on hierarchy 0.
    ! awk '$3 == "cgroup" {print; found = 1} END {exit !found}' /proc/mounts || return 1
    ! awk 'NR > 1 && $2 != 0 {print "v1 hierarchy:", $0; found = 1} END {exit !found}' /proc/cgroups
}
check cgroup2-only cgroup2_only

controllers() {
    local have want c
    have=" $(cat /sys/fs/cgroup/cgroup.controllers) "
    echo "controllers:$have"
    want="cpu cpuset io memory pids"
    # hugetlb when the kernel has it (Debian's has).
    if grep -qw '^hugetlb' /proc/cgroups; then want+=" hugetlb"; fi
    for c in $want; do
        [[ $have == *" $c "* ]] || { echo "missing controller $c"; return 1; }
    done
}
check controllers controllers

cgroup_limits() { # a child cgroup with limits; an allocation past memory.max is OOM-killed
    local cg=/sys/fs/cgroup/corral-selfcheck.$$ rc events
    mkdir "$cg" || return 1
    if ! { echo 64M >"$cg/memory.max" && echo 0 >"$cg/memory.swap.max" && echo 20 >"$cg/pids.max" &&
        echo "50000 100000" >"$cg/cpu.max" && echo 0 >"$cg/cpuset.cpus"; }; then
        rmdir "$cg"
        return 1
    fi
    cat "$cg/memory.max" "$cg/pids.max" "$cg/cpu.max" "$cg/cpuset.cpus.effective"
    sh -c "echo \$\$ >$cg/cgroup.procs && exec python3 -c 'b = bytearray(256 << 20)'"
    rc=$?
    events=$(grep -w oom_kill "$cg/memory.events")
    echo "allocation: exit status $rc, $events"
    rmdir "$cg"
    [ "$rc" = 137 ] && [[ $events == "oom_kill "[1-9]* ]]
}
# Under systemd the cgroup tree is systemd's: the same through a transient scope, further down.
[ "$(cat /proc/1/comm)" = systemd ] || check cgroup-limits-and-oom-kill cgroup_limits

check cgroupns unshare --cgroup --fork --mount-proc --pid --mount sh -c 'grep -qx "0::/" /proc/self/cgroup'

# ---- filesystems ----

overlay_in() { # overlay_in DIR: an overlay mount with lower, upper and work dirs under DIR
    local d rc=0
    d=$(mktemp -d "$1/selfcheck-ovl.XXXXXX") || return 1
    mkdir "$d/lower" "$d/upper" "$d/work" "$d/merged"
    echo lower >"$d/lower/file"
    mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" || {
        rm -rf "$d"
        return 1
    }
    { [ "$(cat "$d/merged/file")" = lower ] && echo upper >"$d/merged/file" && echo new >"$d/merged/new" &&
        [ "$(cat "$d/upper/file")" = upper ] && rm "$d/merged/file" && [ -c "$d/upper/file" ]; } || rc=1
    umount "$d/merged"
    rm -rf "$d"
    return $rc
}
check overlay-upper-on-var-lib overlay_in /var/lib
check overlay-upper-on-tmp overlay_in /tmp
check overlay-upper-on-run overlay_in /run
# The known limit: an upper dir on the overlay root itself is refused (hence the tmpfs dirs).
not_overlay_in() { mkdir -p "$1" && ! overlay_in "$1"; }
check overlay-upper-on-root-refused not_overlay_in /var/cache/corral-selfcheck
check root-writable-host-readonly sh -c 'echo x >/etc/corral-selfcheck && rm /etc/corral-selfcheck && ! touch /run/corral-vm/host/etc/corral-selfcheck 2>/dev/null'
check working-directory test -f "$hack/vm/selfcheck.sh"
check unshare-user-pid-net unshare --user --map-root-user --pid --fork --net --mount --mount-proc sh -c '[ "$(id -u)" = 0 ] && [ "$(ip -o link | wc -l)" = 1 ]'

# ---- network ----

netns_bridge_veth() {
    local rc=0 srv
    ip link add selfbr0 type bridge && ip addr add 10.213.0.1/24 dev selfbr0 && ip link set selfbr0 up &&
        ip netns add selfcheck && ip link add selfveth0 type veth peer name selfveth1 &&
        ip link set selfveth1 netns selfcheck && ip link set selfveth0 master selfbr0 && ip link set selfveth0 up &&
        ip -n selfcheck addr add 10.213.0.2/24 dev selfveth1 && ip -n selfcheck link set selfveth1 up &&
        ip -n selfcheck link set lo up || rc=1
    if [ $rc = 0 ]; then
        ip netns exec selfcheck python3 -c '
import socket
s = socket.create_server(("10.213.0.2", 8080))
s.settimeout(20)
c, _ = s.accept()
c.sendall(b"hello from the netns\n")' &
        srv=$!
        python3 -c '
import socket, time
for _ in range(100):
    try:
        print(socket.create_connection(("10.213.0.2", 8080), timeout=5).recv(64).decode().strip()); break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("no answer from 10.213.0.2:8080")' || rc=1
        wait "$srv" || rc=1
    fi
    ip link del selfveth0 2>/dev/null
    ip link del selfbr0 2>/dev/null
    ip netns del selfcheck 2>/dev/null
    return $rc
}
check netns-bridge-veth netns_bridge_veth
check loopback python3 -c '
import socket
s = socket.create_server(("127.0.0.1", 0))
socket.create_connection(s.getsockname()).sendall(b"x")
assert s.accept()[0].recv(1) == b"x"'
iptables_nat() {
    iptables -w -t nat -N SELFCHECK && iptables -w -t nat -A SELFCHECK -s 10.213.0.0/24 -j MASQUERADE &&
        iptables -w -t nat -S SELFCHECK | grep -q MASQUERADE &&
        iptables -w -A FORWARD -i selfbr0 -j ACCEPT && iptables -w -D FORWARD -i selfbr0 -j ACCEPT &&
        iptables -w -t nat -F SELFCHECK && iptables -w -t nat -X SELFCHECK
}
check iptables iptables_nat

# ---- what the guest tests use ----

registry() {
    local d addr rc=0
    d=$(mktemp -d /tmp/selfcheck-registry.XXXXXX)
    addr=$("$hack/registry.sh" start "$d/r") || { rm -rf "$d"; return 1; }
    echo "registry on $addr"
    "$hack/build-images.py" "$addr" --only corral/busybox || rc=1
    curl -sf --noproxy '*' "http://$addr/v2/_catalog" || rc=1
    "$hack/registry.sh" stop "$d/r"
    rm -rf "$d"
    return $rc
}
check registry-and-images registry

# ---- systemd ----

if [ "$(cat /proc/1/comm)" = systemd ]; then
    check systemd-running sh -c 's=$(systemctl is-system-running --wait); echo "$s"; systemctl --failed --no-legend; [ "$s" = running ]'
    check systemd-private-socket test -S /run/systemd/private
    check systemd-run-scope systemd-run --quiet --scope true
    scope_limits() {
        systemd-run --quiet --scope --unit="selfcheck-$$" -p MemoryMax=64M -p TasksMax=20 -p CPUQuota=50% \
            sh -c 'cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); echo "$cg"
                   [ "$(cat "$cg/memory.max")" = 67108864 ] && [ "$(cat "$cg/pids.max")" = 20 ] &&
                   [ "$(cat "$cg/cpu.max")" = "50000 100000" ]'
    }
    check systemd-scope-limits scope_limits
    scope_oom() {
        local rc
        systemd-run --quiet --scope --unit="selfcheck-oom-$$" -p MemoryMax=64M -p MemorySwapMax=0 \
            python3 -c 'b = bytearray(256 << 20)'
        rc=$?
        echo "allocation: exit status $rc"
        [ "$rc" = 137 ]
    }
    check systemd-scope-oom-kill scope_oom
    check dbus-system-bus busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId
    check dbus-systemd-manager busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
        org.freedesktop.systemd1.Manager Version
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
