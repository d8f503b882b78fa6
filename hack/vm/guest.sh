#!/run/corral-vm/bin/sh
# shellcheck shell=dash
# Guest side of hack/vm/run.sh, run by busybox sh: as PID 1 ("pid1", a small init) or from
# corral-vm.service under systemd ("service"). Runs the control dir's cmd.sh with its stdout and
# stderr on the virtio-serial ports corral-vm.stdout and corral-vm.stderr, writes its exit
# status to the control dir's rc, and powers the guest off.
mode=${1:-pid1}
bb=/run/corral-vm/bin/busybox
ctl=/run/corral-vm/ctl
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/corral-vm/bin

if [ "$mode" = pid1 ]; then
    $bb mount -t proc -o nosuid,nodev,noexec proc /proc
    $bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    $bb mkdir -p /dev/pts /dev/shm /dev/mqueue
    $bb mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts
    $bb ln -sf pts/ptmx /dev/ptmx
    $bb mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
    $bb mount -t mqueue mqueue /dev/mqueue
    $bb ln -sf /proc/self/fd /dev/fd
    $bb ln -sf /proc/self/fd/0 /dev/stdin
    $bb ln -sf /proc/self/fd/1 /dev/stdout
    $bb ln -sf /proc/self/fd/2 /dev/stderr
    # The unified hierarchy as systemd mounts it, every controller enabled for the root's
    # children.
    $bb mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
        $bb mount -t cgroup2 cgroup2 /sys/fs/cgroup
    for c in $($bb cat /sys/fs/cgroup/cgroup.controllers); do
        echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control
    done
    $bb mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    $bb mount -t bpf bpf /sys/fs/bpf 2>/dev/null
    $bb mkdir -p /run/lock /run/user
    $bb hostname corral-vm
    $bb ip link set lo up
fi
$bb cut -d' ' -f1 /proc/uptime >$ctl/t-guest

# The virtio-serial ports by name (no udev: make the nodes if missing).
out=/dev/console
err=/dev/console
for p in /sys/class/virtio-ports/vport*; do
    [ -e "$p/name" ] || continue
    dev=/dev/${p##*/}
    # shellcheck disable=SC2046 # major and minor
    [ -e "$dev" ] || $bb mknod "$dev" c $($bb tr : ' ' <"$p/dev")
    case "$($bb cat "$p/name")" in
        corral-vm.stdout) out=$dev ;;
        corral-vm.stderr) err=$dev ;;
    esac
done

sh=/bin/bash
[ -x $sh ] || sh=/run/corral-vm/bin/sh
export HOME=/root TERM=dumb CORRAL_VM=1
$bb cut -d' ' -f1 /proc/uptime >$ctl/t-cmd
# As PID 1 the shell reaps orphans while it waits for the command.
$sh $ctl/cmd.sh </dev/null >"$out" 2>"$err"
rc=$?
$bb cut -d' ' -f1 /proc/uptime >$ctl/t-end
echo "$rc" >$ctl/rc
$bb sync
# Nothing in the guest persists: power off at once, no orderly shutdown.
$bb poweroff -f
echo o >/proc/sysrq-trigger
$bb sleep 10
