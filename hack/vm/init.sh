#!/bin/busybox sh
# shellcheck shell=dash
# /init of the corral-vm initramfs (hack/vm/run.sh builds it; busybox only).
#
# Builds the guest's root: the host's / over 9p (read-only) as the lower layer of an overlay
# whose upper layer is a guest tmpfs; fresh tmpfs on /run, /tmp and /var/lib (an overlayfs
# upper dir cannot sit on the overlay root, and corrald's and the tests' dirs go there); the
# run's control dir (9p, read-write) on /run/corral-vm/ctl; then switch_root to
# hack/vm/guest.sh (corral.init=shell) or to the host's systemd (corral.init=systemd).
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() {
    echo "corral-vm init: FATAL: $*" >/dev/console
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 10
}

init=shell
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        corral.init=*) init=${arg#corral.init=} ;;
        corral.debug=1) set -x ;;
    esac
done
kver=$(uname -r)

# Just enough to reach the host's root; the rest loads on demand from the cached kernel package.
for m in virtio_pci virtio_console 9pnet_virtio 9p overlay; do
    modprobe "$m" || die "modprobe $m"
done

mkdir -p /lower /rw /newroot
# The virtio-9p channel may register a moment after the module loads.
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 100 ] || die "cannot mount the host's root (9p tag hostroot)"
    sleep 0.05
done
mount -t tmpfs -o mode=0755,size=75% rootrw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    die "cannot mount the overlay root"

n=/newroot
mount -t tmpfs -o mode=0755,nosuid,nodev run $n/run
mkdir -p $n/run/corral-vm/ctl $n/run/corral-vm/host $n/run/corral-vm/bin
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none ctl $n/run/corral-vm/ctl ||
    die "cannot mount the control dir (9p tag ctl)"
ctl=$n/run/corral-vm/ctl
# The untouched host root, read-only (the host's /tmp is at /run/corral-vm/host/tmp).
mount --bind /lower $n/run/corral-vm/host
cp /bin/busybox $n/run/corral-vm/bin/busybox
for app in sh modprobe poweroff mount cat; do ln -s busybox $n/run/corral-vm/bin/$app; done
cp $ctl/guest.sh $n/run/corral-vm/guest.sh || die "no guest.sh in the control dir"
chmod 0755 $n/run/corral-vm/guest.sh

# The kernel's modules: the unpacked package in the host's cache.
moddir=$(cat $ctl/moddir)
if [ -d "/lower$moddir/$kver" ]; then
    mkdir -p "$n/lib/modules/$kver"
    mount --bind "/lower$moddir/$kver" "$n/lib/modules/$kver"
fi

# A fresh /tmp (systemd-tmpfiles would otherwise clean the host's /tmp through the overlay, and
# test dirs need a real filesystem) and /var/lib (overlay upper dirs: corrald's --root).
mount -t tmpfs -o mode=1777,nosuid,nodev tmp $n/tmp
mkdir -p $n/var/lib
mount -t tmpfs -o mode=0755 varlib $n/var/lib

# Paths of the host to keep visible although a tmpfs above covers them (the working directory
# under /tmp, say): an overlay of the host's dir (lower, read-only 9p) and a tmpfs upper.
k=0
while read -r path; do
    [ -n "$path" ] || continue
    k=$((k + 1))
    up=$n/run/corral-vm/keep/$k
    mkdir -p "$up/upper" "$up/work" "$n$path"
    mount -t overlay -o "lowerdir=/lower$path,upperdir=$up/upper,workdir=$up/work" overlay "$n$path" ||
        die "cannot keep $path"
done <$ctl/keep

# The host may have no kmod: let the kernel auto-load modules with busybox's modprobe.
echo /run/corral-vm/bin/modprobe >/proc/sys/kernel/modprobe

if [ "$init" = systemd ]; then
    # Runtime units (/run/systemd/system): the target booted into and the command's service.
    mkdir -p $n/run/systemd/system
    cp $ctl/corral-vm.target $ctl/corral-vm.service $n/run/systemd/system/ || die "unit files"
    # What a throw-away test guest has no use for, each a few seconds of boot under TCG: the
    # generators (fstab, getty, sysv scripts, the host's own), and units around persistence,
    # users, time and modules (the kernel loads its modules on demand).
    mkdir -p $n/run/systemd/system-generators
    for g in "$n"/lib/systemd/system-generators/*; do
        ln -sf /dev/null "$n/run/systemd/system-generators/${g##*/}"
    done
    for u in systemd-remount-fs.service systemd-sysusers.service systemd-update-utmp.service \
        systemd-journal-flush.service systemd-tmpfiles-setup-dev.service systemd-timesyncd.service \
        systemd-pstore.service systemd-firstboot.service systemd-binfmt.service modprobe@.service \
        systemd-modules-load.service systemd-random-seed.service; do
        ln -sf /dev/null "$n/run/systemd/system/$u"
    done
    # Nothing of the host's fstab applies; a new machine id for this boot.
    : >$n/etc/fstab
    rm -f $n/etc/machine-id && : >$n/etc/machine-id
    umount /proc /sys /dev
    exec switch_root $n /lib/systemd/systemd systemd.unit=corral-vm.target
fi
mount --move /dev $n/dev
umount /sys /proc
exec switch_root $n /run/corral-vm/bin/sh /run/corral-vm/guest.sh pid1
