#!/usr/bin/env bash
# Runs a command in a throw-away qemu guest whose kernel has the cgroup v2 unified hierarchy only
# (Debian's kernel booted with cgroup_no_v1=all), with a small shell or systemd as PID 1.
#
#   hack/vm/run.sh [options] -- CMD [ARGS...]
#
#   --systemd        systemd as PID 1 (D-Bus, systemd-run); default: a small busybox init
#   --mem MIB        guest memory (default 3072)
#   --cpus N         vCPUs (default 2)
#   --timeout S      seconds before qemu is killed (default 1800)
#   --env NAME       pass the host's $NAME into the guest (repeatable; NAME=VALUE sets it)
#   --accel A        auto (default: kvm when the CPU shows vmx/svm, else tcg), kvm or tcg
#   --timing         print boot and command times on stderr
#   --verbose        stream the guest's console (kernel log) to stderr
#   --keep           keep the per-run dir (console log) and say where
#   --setup          install and cache what the guest needs, boot nothing
#
# The guest sees the host's / read-only under an overlay (writes go to guest memory and vanish),
# with fresh tmpfs on /run, /tmp and /var/lib; the working directory is kept (even under /tmp).
# No NIC: loopback, veth, bridges, netns and iptables work inside. CMD's stdout and stderr come
# back separately; stdin is /dev/null.
#
# Exit status: CMD's; 124 when the timeout killed the guest; 125 when the guest could not be
# started or ended without CMD's status (the reason and the console's tail go to stderr).
#
# Environment: CORRAL_VM_CACHE (default /var/cache/corral-vm) holds the unpacked kernel package
# and the initramfs; CORRAL_VM_KERNEL_PKG picks the kernel (default: what linux-image-amd64
# depends on). Needs root; installs qemu-system-x86 (from <codename>-backports), busybox-static,
# and with --systemd systemd and dbus, from Debian's packages when missing. Removes nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CORRAL_VM_CACHE:-/var/cache/corral-vm}
init=shell mem=3072 cpus=2 timeout=1800 accel=auto
timing='' verbose='' keep='' setup_only=''
envs=()

log() { echo "corral-vm: $*" >&2; }
# The guest could not be had: loudly, never a silent skip.
fail() {
    {
        echo "corral-vm: ==================================================================="
        echo "corral-vm: FAILED: $*"
        echo "corral-vm: ==================================================================="
    } >&2
    exit 125
}
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --systemd) init=systemd ;;
        --mem) mem=${2:?--mem MIB}; shift ;;
        --cpus) cpus=${2:?--cpus N}; shift ;;
        --timeout) timeout=${2:?--timeout S}; shift ;;
        --env) envs+=("${2:?--env NAME}"); shift ;;
        --accel) accel=${2:?--accel auto|kvm|tcg}; shift ;;
        --timing) timing=1 ;;
        --verbose) verbose=1 ;;
        --keep) keep=1 ;;
        --setup) setup_only=1 ;;
        --) shift; break ;;
        -h | --help) usage ;;
        -*) log "unknown option $1"; usage ;;
        *) break ;;
    esac
    shift
done
[ $# -gt 0 ] || [ -n "$setup_only" ] || usage
for n in "$mem" "$cpus" "$timeout"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || fail "--mem, --cpus and --timeout take positive integers, not '$n'"
done
[ "$(id -u)" = 0 ] || fail "must run as root (9p passthrough of the host's /)"

# ---- host packages ----------------------------------------------------------------------------

apt_opts=(-o DPkg::Lock::Timeout=300 -y -q --no-install-recommends --no-remove)
apt_updated=
apt_update() {
    [ -n "$apt_updated" ] || apt-get -o DPkg::Lock::Timeout=300 -q update >&2 || true
    apt_updated=1
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
install_pkgs() {
    apt_update
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install "$@" >&2 ||
        fail "apt-get install $* failed"
}

# qemu-system-x86 from <codename>-backports, through a source list of our own for this one
# install (the machine's apt configuration is not changed): the machine may carry qemu-utils
# from backports, which bookworm's qemu-system-x86 would have apt remove.
install_qemu() {
    local codename uri d
    codename=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release | tr -d "\"")
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v '^ *#' | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n1 | tr -d ' ' || true)
    if [ -n "$codename" ] && [ -n "$uri" ]; then
        d=$(mktemp -d)
        mkdir -p "$d/parts" "$d/lists/partial" "$d/archives/partial"
        cp /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list "$d/parts/" 2>/dev/null || true
        [ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$d/parts/machine.list"
        printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: %s\n' \
            "$uri" "$codename" /usr/share/keyrings/debian-archive-keyring.gpg >"$d/parts/backports.sources"
        local o=(-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts="$d/parts"
            -o Dir::State::lists="$d/lists" -o Dir::Cache::archives="$d/archives" -o APT::Sandbox::User=root)
        log "installing qemu-system-x86 from $codename-backports"
        if apt-get "${o[@]}" -q update >&2; then
            DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" "${apt_opts[@]}" \
                -t "$codename-backports" install qemu-system-x86 >&2 || log "qemu from backports failed"
        fi
        rm -rf -- "$d"
    fi
    command -v qemu-system-x86_64 >/dev/null || install_pkgs qemu-system-x86
}

command -v qemu-system-x86_64 >/dev/null || install_qemu
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is not installed and could not be"
[ -x /bin/busybox ] || install_pkgs busybox-static
if [ "$init" = systemd ]; then
    missing=()
    installed systemd || missing+=(systemd)
    installed dbus || missing+=(dbus)
    [ ${#missing[@]} -eq 0 ] || install_pkgs "${missing[@]}"
fi

# ---- kernel and initramfs (cached) ------------------------------------------------------------

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
exec 9>"$cache/.lock"
flock 9 # one setup at a time; the runs themselves are independent

kernel_pkg() {
    local pkg
    [ -z "${CORRAL_VM_KERNEL_PKG:-}" ] || { echo "$CORRAL_VM_KERNEL_PKG"; return; }
    [ ! -s "$cache/kernel-pkg" ] || { cat "$cache/kernel-pkg"; return; }
    # The generic flavour: the cloud kernel has no 9p.
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt_update
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || fail "cannot tell which kernel linux-image-amd64 depends on (apt-cache depends)"
    echo "$pkg" >"$cache/kernel-pkg"
    echo "$pkg"
}
kpkg=$(kernel_pkg)
kver=${kpkg#linux-image-}
kdir=$cache/$kpkg
moddir=$kdir/lib/modules

# Writes an uncompressed ELF vmlinux from a bzImage when it carries the PVH entry note, for
# qemu's direct PVH boot: under TCG, decompressing the bzImage in the guest costs seconds a boot.
extract_vmlinux() {
    python3 - "$1" "$2" <<'EOF'
import lzma, struct, sys, zlib
data = open(sys.argv[1], "rb").read()
setup = ((data[0x1F1] or 4) + 1) * 512
offset, length = struct.unpack_from("<II", data, 0x248)
payload = data[setup + offset:setup + offset + length]
if payload.startswith(b"\xfd7zXZ\x00"):
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
elif payload.startswith(b"\x1f\x8b"):
    elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
else:
    sys.exit("unknown kernel compression")
if elf[:4] != b"\x7fELF" or elf[4] != 2:
    sys.exit("payload is not a 64-bit ELF")
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
pvh = False
for i in range(phnum):
    ptype, _, off, _, _, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
    end = off + filesz
    while ptype == 4 and off + 12 <= end:  # PT_NOTE: namesz, descsz, type, name, desc
        namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
        name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
        pvh |= name == b"Xen" and ntype == 18  # XEN_ELFNOTE_PHYS32_ENTRY
        off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
if not pvh:
    sys.exit("no PVH entry note")
open(sys.argv[2], "wb").write(elf)
EOF
}

if [ ! -f "$kdir/.complete" ]; then
    log "fetching $kpkg into $cache (once)"
    rm -rf -- "$kdir" "$cache/download"
    mkdir -p "$cache/download"
    if ! (cd "$cache/download" && apt-get -q download "$kpkg" >&2); then
        apt_update
        (cd "$cache/download" && apt-get -q download "$kpkg" >&2) || {
            rm -rf -- "$cache/download"
            # Resolve linux-image-amd64 afresh next time.
            [ "$(cat "$cache/kernel-pkg" 2>/dev/null)" != "$kpkg" ] || rm -f "$cache/kernel-pkg"
            fail "apt-get download $kpkg failed: no kernel for the guest"
        }
    fi
    mkdir -p "$kdir"
    dpkg-deb -x "$cache/download/${kpkg}"_*.deb "$kdir" || fail "cannot unpack $kpkg"
    rm -rf -- "$cache/download"
    # Drivers a qemu guest never loads (about 400 MB down to 150).
    (cd "$moddir/$kver/kernel" && rm -rf sound drivers/gpu drivers/media drivers/infiniband \
        drivers/staging drivers/iio drivers/usb drivers/hid drivers/input drivers/hwmon \
        drivers/bluetooth drivers/isdn drivers/mtd drivers/platform drivers/net/wireless \
        drivers/net/ethernet net/wireless net/mac80211 net/bluetooth)
    # Debian's package has no modules.dep (its postinst runs depmod); the guest's modprobe is
    # busybox's, which reads it.
    busybox depmod -b "$kdir" "$kver" || fail "depmod for $kver failed"
    if command -v python3 >/dev/null; then
        extract_vmlinux "$kdir/boot/vmlinuz-$kver" "$kdir/boot/vmlinux-$kver" ||
            log "no vmlinux for PVH boot, the bzImage is booted"
    fi
    touch "$kdir/.complete"
fi
kernel=$kdir/boot/vmlinux-$kver
[ -f "$kernel" ] || kernel=$kdir/boot/vmlinuz-$kver
[ -f "$kernel" ] || fail "no kernel image in $kdir/boot"

# The initramfs: busybox, hack/vm/init.sh and the modules (with their dependencies) that reach
# the host's root. Named after what it is made of, so a changed init.sh makes a new one.
boot_modules=(virtio_pci virtio_console 9pnet_virtio 9p overlay)
initrd_id=$(cat "$here/init.sh" /bin/busybox | sha256sum | cut -c1-16)
initrd=$cache/initramfs-$kver-$initrd_id.cpio
if [ ! -f "$initrd" ]; then
    log "building $initrd"
    t=$(mktemp -d)
    mkdir -p "$t/bin" "$t/lib/modules/$kver"
    cp /bin/busybox "$t/bin/busybox"
    cp "$here/init.sh" "$t/init" && chmod 0755 "$t/init"
    cp "$moddir/$kver/modules.builtin" "$moddir/$kver/modules.order" "$t/lib/modules/$kver/"
    # Each module's file and its dependencies' (modules.dep: "path: dep dep ...").
    declare -A want=()
    for m in "${boot_modules[@]}"; do
        line=$(grep -E "(^|/)${m}\.ko[^:]*:" "$moddir/$kver/modules.dep" || true)
        if [ -z "$line" ]; then
            grep -qE "(^|/)${m}\.ko" "$moddir/$kver/modules.builtin" || { rm -rf -- "$t"; fail "module $m is not in $kpkg"; }
            continue
        fi
        read -ra files <<<"${line/:/}"
        for f in "${files[@]}"; do want[$f]=1; done
    done
    for f in "${!want[@]}"; do
        mkdir -p "$t/lib/modules/$kver/$(dirname "$f")"
        cp "$moddir/$kver/$f" "$t/lib/modules/$kver/$f"
    done
    busybox depmod -b "$t" "$kver"
    (cd "$t" && find . | busybox cpio -o -H newc 2>/dev/null) >"$initrd.tmp"
    rm -rf -- "$t"
    rm -f "$cache/initramfs-$kver-"*.cpio
    mv "$initrd.tmp" "$initrd"
fi
flock -u 9
exec 9>&-
if [ -n "$setup_only" ]; then
    log "ready: $kernel, $initrd"
    exit 0
fi

# ---- the run ----------------------------------------------------------------------------------

run=$(mktemp -d "${TMPDIR:-/tmp}/corral-vm.XXXXXX")
ctl=$run/ctl
mkdir "$ctl"
qemu_pid='' watchdog_pid='' relay_pids=()
# The relays block until qemu opens the FIFOs and read until it closes them: once qemu is gone,
# an open of our own ends both.
end_relays() {
    local f
    for f in stdout stderr; do
        if [ -p "$run/$f" ]; then
            exec 3<>"$run/$f"
            exec 3>&-
        fi
    done
    [ ${#relay_pids[@]} -eq 0 ] || wait "${relay_pids[@]}" 2>/dev/null || true
    relay_pids=()
}
# shellcheck disable=SC2317 # (run by the trap)
cleanup() {
    if [ -n "$qemu_pid" ]; then
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    [ -z "$watchdog_pid" ] || kill "$watchdog_pid" 2>/dev/null || true
    end_relays
    if [ -n "$keep" ]; then log "run dir kept: $run"; else rm -rf -- "$run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cp "$here/guest.sh" "$ctl/guest.sh"
echo "$moddir" >"$ctl/moddir"
# The working directory stays visible where a guest tmpfs covers it.
case "$PWD/" in
    /tmp/* | /run/* | /var/lib/*) echo "$PWD" >"$ctl/keep" ;;
    *) : >"$ctl/keep" ;;
esac
for a in "$@"; do
    case "$a" in
        /tmp/* | /run/* | /var/lib/*)
            [[ $a == "$PWD"/* ]] || log "warning: $a is under a fresh tmpfs in the guest (the host's is at /run/corral-vm/host$a)" ;;
    esac
done
{
    echo "# written by hack/vm/run.sh"
    for e in "${envs[@]}"; do
        if [[ $e == *=* ]]; then
            printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
        elif [ -n "${!e+set}" ]; then
            printf 'export %s=%q\n' "$e" "${!e}"
        fi
    done
    printf 'cd %q || { echo "corral-vm: cannot enter %q in the guest" >&2; exit 125; }\n' "$PWD" "$PWD"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} >"$ctl/cmd.sh"

cat >"$ctl/corral-vm.target" <<'EOF'
[Unit]
Description=corral-vm: the guest's target
Requires=basic.target
Wants=corral-vm.service
After=basic.target
AllowIsolate=yes
EOF
cat >"$ctl/corral-vm.service" <<'EOF'
[Unit]
Description=corral-vm: the command
Wants=dbus.socket
After=basic.target dbus.socket
[Service]
# simple: the boot completes (is-system-running says running) while the command runs.
Type=simple
ExecStart=/run/corral-vm/bin/sh /run/corral-vm/guest.sh service
Delegate=yes
EOF

if [ "$accel" = auto ]; then
    # /dev/kvm without vmx/svm (a PVM host) runs only PVM guest kernels: a stock one crawls.
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; else accel=tcg; fi
fi
case "$accel" in
    kvm) accel_args=(-accel kvm -cpu host) ;;
    tcg) accel_args=(-accel "tcg,thread=multi,tb-size=256" -cpu max) ;;
    *) fail "--accel takes auto, kvm or tcg" ;;
esac

append="console=ttyS0 panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 corral.init=$init"
append+=" tsc=reliable no_timer_check mitigations=off random.trust_cpu=on"
if [ -n "$verbose" ]; then append+=" loglevel=7"; else append+=" quiet loglevel=3"; fi
[ "$init" != systemd ] || append+=" systemd.show_status=0 systemd.log_level=notice"
if [ -n "$verbose" ]; then
    console=(-chardev "stdio,id=con,signal=off")
else
    console=(-chardev "file,id=con,path=$run/console.log")
fi

# The guest's stdout and stderr: virtio-serial ports written into FIFOs, relayed by cat to ours
# (whatever they are: tty, pipe, file). A relay that dies (our reader went away) stops the guest.
mkfifo "$run/stdout" "$run/stderr"
relay() {
    cat "$1" && return
    touch "$run/relay-broken"
    kill "$(cat "$run/qemu.pid" 2>/dev/null)" 2>/dev/null || true
}
relay "$run/stdout" &
relay_pids+=($!)
relay "$run/stderr" >&2 &
relay_pids+=($!)

start=$(date +%s.%N)
qemu-system-x86_64 -name corral-vm -nodefaults -no-user-config -nographic -no-reboot \
    -pidfile "$run/qemu.pid" -M pc "${accel_args[@]}" -m "$mem" -smp "$cpus" \
    -kernel "$kernel" -initrd "$initrd" -append "$append" \
    "${console[@]}" -serial chardev:con \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$ctl,mount_tag=ctl,security_model=none,multidevs=remap" \
    -device virtio-serial-pci \
    -chardev "file,id=out,path=$run/stdout" -device virtserialport,chardev=out,name=corral-vm.stdout \
    -chardev "file,id=err,path=$run/stderr" -device virtserialport,chardev=err,name=corral-vm.stderr \
    -device virtio-rng-pci \
    </dev/null &
qemu_pid=$!
# The timeout: qemu is killed by its pid (TERM, then KILL).
(
    sleep "$timeout" &
    s=$!
    trap 'kill $s 2>/dev/null; exit 0' TERM
    wait "$s"
    touch "$run/timed-out"
    kill -TERM "$qemu_pid" 2>/dev/null
    for _ in $(seq 50); do
        kill -0 "$qemu_pid" 2>/dev/null || exit 0
        sleep 0.1
    done
    kill -KILL "$qemu_pid" 2>/dev/null
) &
watchdog_pid=$!

set +e
wait "$qemu_pid"
qemu_rc=$?
set -e
qemu_pid=
kill "$watchdog_pid" 2>/dev/null || true
wait "$watchdog_pid" 2>/dev/null || true
watchdog_pid=
end_relays
end=$(date +%s.%N)

if [ -n "$timing" ] && [ -f "$ctl/t-cmd" ]; then
    log "$(awk -v a="$start" -v b="$end" -v g="$(cat "$ctl/t-guest")" -v c="$(cat "$ctl/t-cmd")" \
        -v e="$(cat "$ctl/t-end" 2>/dev/null || echo 0)" -v i="$init" -v acc="$accel" \
        'BEGIN { printf "%s guest (%s): wall %.1f s; guest uptime %.1f s at init, %.1f s at the command, which ran %.1f s", i, acc, b - a, g, c, e - c }')"
fi
if [ -f "$run/timed-out" ]; then
    log "TIMEOUT: the guest was killed after ${timeout}s"
    [ ! -f "$run/console.log" ] || { log "console tail:"; tail -n 30 "$run/console.log" | tr -d '\r' >&2; }
    exit 124
fi
if [ -f "$ctl/rc" ]; then
    exit "$(cat "$ctl/rc")"
fi
if [ -f "$run/relay-broken" ]; then
    log "FAILED: our stdout or stderr was closed (a reader went away): the guest was stopped"
    exit 125
fi
log "FAILED: the guest ended without the command's exit status (qemu exit status $qemu_rc)"
[ ! -f "$run/console.log" ] || { log "console tail:"; tail -n 40 "$run/console.log" | tr -d '\r' >&2; }
exit 125
