#!/usr/bin/env bash
# corral vs containerd on this machine, side by side, in one run.
#
#   sudo hack/bench.sh
#
# Installs what is missing (Debian's containerd, runc, containernetworking-plugins, ...),
# builds release, starts the local test registry, then a PRIVATE containerd (own config, root,
# state, socket, CNI conf dir with the reference bridge + host-local + portmap, own bridge and
# subnet) and a private corrald (same, with corral-cni), runs the same hack/bench scenarios
# against both (alternating runtimes per scenario), the CNI chain comparison, prints one table
# with the ratio corral/containerd per step, and removes everything it made.
#
# Sizes (environment): N (iterations per lifecycle scenario, 50), PAR (parallelism, 2),
# PODS (density, 100), PULL_REPS (5), CNI_N (50); the stream scenario's STREAM_SESSIONS (exec
# sessions held open at once, 50), STREAM_MIB (MiB through one port-forwarded connection, 100) and
# STREAM_REPS (transfers, 3; the median counts). KEEP=1 keeps the work dir for reading logs
# (processes, mounts and network objects are removed regardless).
#
# Note: containerd 1.6's shims always put their sockets in /run/containerd/s/<hash of our
# socket address> (hard-coded); they remove them when they exit. Pod netns are kept under
# containerd's state dir (netns_mounts_under_state_dir), corral's under its own.
set -euo pipefail

N=${N:-50}
PAR=${PAR:-2}
PODS=${PODS:-100}
PULL_REPS=${PULL_REPS:-5}
CNI_N=${CNI_N:-50}
STREAM_SESSIONS=${STREAM_SESSIONS:-50}
STREAM_MIB=${STREAM_MIB:-100}
STREAM_REPS=${STREAM_REPS:-3}
# For profiling one side: RUNTIMES="corral" and/or SCENARIOS="pod container" (default: all,
# and the CNI comparison). The side-by-side table needs both runtimes. stream runs after density:
# a daemon's allocator keeps the memory of closed sessions, which density's RSS would count.
RUNTIMES=${RUNTIMES:-corral containerd}
SCENARIOS=${SCENARIOS:-idle pod container pull density stream leftovers cni}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [ "$(id -u)" != 0 ]; then
    echo "bench.sh: must run as root" >&2
    exit 1
fi

log() { echo "bench.sh: $*" >&2; }

hack/install-deps.sh >&2
log "building release"
cargo build --release -q -p agent -p bench >&2
shim_bin=$(hack/build-shim.sh)   # the shim as deployed (static, LTO, panic=abort)
cni_bin=$(hack/build-cni.sh)     # corral-cni as deployed (static)

rand=$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
work=$(mktemp -d "/tmp/corral-bench.$rand.XXXXXX")
bin=$work/bin                    # our binaries, copied: a concurrent build cannot swap them
crl=$work/corral
ctr=$work/containerd
mkdir -p "$bin" "$crl"/{root,state,net.d,cni-bin,logs} "$ctr"/{root,state,net.d,opt,logs,runc,certs.d}
for b in corrald corral-bench; do cp "target/release/$b" "$bin/"; done
cp "$cni_bin" "$bin/corral-cni"
cp "$shim_bin" "$bin/corral-shim"
cp "$bin/corral-cni" "$crl/cni-bin/"
bench=$bin/corral-bench

# Names of everything we create in shared namespaces.
crl_net=crlbench-$rand  crl_br=crlb$rand  crl_subnet=10.211.0.0/16
ctr_net=ctrbench-$rand  ctr_br=ctrb$rand  ctr_subnet=10.212.0.0/16
cni_crl_br=crlc$rand    cni_crl_subnet=10.213.0.0/16
cni_ctr_br=ctrc$rand    cni_ctr_subnet=10.214.0.0/16
crl_cgroup=/corral/bench-$rand   # corrald's --cgroup-parent
ctr_cgroup=/ctrbench-$rand       # prefix of the pods' cgroup_parent sent to containerd
# Our iptables rules: every one carries our network's name in its comment.
pattern="(crlbench|ctrbench|crlcni|ctrcni)-$rand"

for s in $crl_subnet $ctr_subnet $cni_crl_subnet $cni_ctr_subnet; do
    if ip route show | grep -q "^${s%%.0.0/16}\."; then
        log "subnet $s is already routed on this host; refusing to run"
        exit 1
    fi
done

ls /var/run/netns 2>/dev/null | sort >"$work/netns.before" || true
ls /run/containerd/s 2>/dev/null | sort >"$work/ctr-sockets.before" || true
hostport_chains_before=no
iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && hostport_chains_before=yes

crl_pid= ctr_pid=

stop_pid() { # pid: TERM, wait up to 20 s, then KILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

pids_with_arg() { # processes whose command line contains $1
    local p
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$1"; then echo "${p#/proc/}"; fi
    done
}

our_cgroups() { # our cgroup directories in every v1 hierarchy, deepest first
    find /sys/fs/cgroup/*/corral/bench-"$rand" /sys/fs/cgroup/*/ctrbench-"$rand" \
        -depth -type d 2>/dev/null || true
}

iptables_ours() { # rules of ours still in the nat and filter tables
    local t
    for t in nat filter; do iptables-save -t "$t" 2>/dev/null | grep -E -- "$pattern" | grep '^-A' || true; done
}

remove_iptables_ours() {
    local t rules chains c
    for t in nat filter; do
        rules=$(iptables-save -t "$t" 2>/dev/null | grep '^-A' | grep -E -- "$pattern" || true)
        [ -n "$rules" ] || continue
        # Per-container chains: those our rules jump to or live in (never built-in ones).
        chains=$(echo "$rules" | grep -oE -- '-j (CNI|CORRAL)-[A-Za-z0-9_-]+|^-A (CNI|CORRAL)-[A-Za-z0-9_-]+' \
            | awk '{print $2}' | grep -vE '^CNI-HOSTPORT-' | sort -u || true)
        {
            echo "*$t"
            echo "$rules" | sed 's/^-A/-D/'
            for c in $chains; do echo "-F $c"; echo "-X $c"; done
            echo COMMIT
        } | iptables-restore --noflush 2>/dev/null || log "iptables cleanup of $t failed"
    done
    # The reference portmap's shared chains, if this run made them and nothing else uses them.
    if [ "$hostport_chains_before" = no ] && iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 \
        && [ "$(iptables -t nat -S CNI-HOSTPORT-DNAT | wc -l)" -le 1 ]; then
        {
            echo "*nat"
            iptables-save -t nat | grep '^-A' | grep -E -- '-j CNI-HOSTPORT-(DNAT|MASQ|SETMARK)$' \
                | grep -vE '^-A CNI-HOSTPORT-' | sed 's/^-A/-D/'
            for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
                iptables -t nat -S "$c" >/dev/null 2>&1 && { echo "-F $c"; echo "-X $c"; }
            done
            echo COMMIT
        } | iptables-restore --noflush 2>/dev/null || log "removing CNI-HOSTPORT-* chains failed"
    fi
}

cleanup() {
    local rc=$? pid m c leftovers=()
    trap - EXIT INT TERM
    set +e
    log "cleaning up"
    # Pods first, through the runtimes themselves, while they run.
    [ -n "$crl_pid" ] && timeout 60 "$bench" cri --socket "$crl/corral.sock" --label corral --image x \
        --scenarios cleanup >/dev/null 2>&1
    [ -n "$ctr_pid" ] && timeout 60 "$bench" cri --socket "$ctr/containerd.sock" --label containerd --image x \
        --scenarios cleanup >/dev/null 2>&1
    [ -n "$crl_pid" ] && stop_pid "$crl_pid"
    [ -n "$ctr_pid" ] && stop_pid "$ctr_pid"
    # Shims of our instances (their command lines name our dirs or socket), then whatever is
    # left in our cgroups.
    for pid in $(pids_with_arg "$crl/state") $(pids_with_arg "$ctr/containerd.sock"); do
        kill -KILL "$pid" 2>/dev/null
    done
    for c in $(our_cgroups); do
        for pid in $(cat "$c/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    sleep 0.5
    for c in $(our_cgroups); do rmdir "$c" 2>/dev/null; done
    # Mounts under our dirs, deepest first.
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -F "$work/" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-); do
        umount -l "$m" 2>/dev/null
    done
    for b in "$crl_br" "$ctr_br" "$cni_crl_br" "$cni_ctr_br"; do ip link del "$b" 2>/dev/null; done
    remove_iptables_ours
    [ -f "$work/registry/env" ] && hack/test-env.sh stop "$work/registry" >/dev/null 2>&1

    # What is left of ours anywhere.
    m=$(awk '{print $5}' /proc/self/mountinfo | grep -cF "$work/")
    [ "$m" != 0 ] && leftovers+=("$m mounts under $work")
    m=$(comm -13 "$work/netns.before" <(ls /var/run/netns 2>/dev/null | sort) | tr '\n' ' ')
    [ -n "$m" ] && leftovers+=("netns not there before: $m(may be other users')")
    for b in "$crl_br" "$ctr_br" "$cni_crl_br" "$cni_ctr_br"; do
        [ -e "/sys/class/net/$b" ] && leftovers+=("link $b")
    done
    m=$(ip -o link show type veth 2>/dev/null | grep -cE "master ($crl_br|$ctr_br|$cni_crl_br|$cni_ctr_br) ")
    [ "$m" != 0 ] && leftovers+=("$m veths on our bridges")
    m=$(iptables_ours | wc -l)
    [ "$m" != 0 ] && leftovers+=("$m iptables rules: $(iptables_ours | head -3 | tr '\n' ';')")
    if [ "$hostport_chains_before" = no ] && iptables -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1; then
        leftovers+=("CNI-HOSTPORT-* chains (in use by someone else?)")
    fi
    m=$( (pids_with_arg "$crl/state"; pids_with_arg "$ctr/containerd.sock") | grep -vx "$$" | wc -l)
    [ "$m" != 0 ] && leftovers+=("$m processes")
    m=$(our_cgroups | wc -l)
    [ "$m" != 0 ] && leftovers+=("$m cgroups")
    m=$(comm -13 "$work/ctr-sockets.before" <(ls /run/containerd/s 2>/dev/null | sort) | wc -l)
    [ "$m" != 0 ] && leftovers+=("$m new shim sockets in /run/containerd/s (may be other users')")
    if [ "${#leftovers[@]}" = 0 ]; then
        log "cleanup check: nothing left (mounts, netns, bridges, veths, iptables rules, processes, cgroups)"
    else
        log "cleanup check: LEFT BEHIND: ${leftovers[*]}"
    fi
    if [ "${KEEP:-}" = 1 ]; then log "kept $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "work dir $work"
hack/test-env.sh start "$work/registry" >/dev/null
. "$work/registry/env"
registry=$CORRAL_TEST_REGISTRY
busybox=$registry/corral/busybox:latest
pause=$registry/corral/pause:latest
multilayer=$registry/corral/multilayer:latest

conflist() { # name type bridge subnet dataDir: the reference shape, with portmap for "bridge"
    local portmap=""
    [ "$2" = bridge ] && portmap=', {"type": "portmap", "capabilities": {"portMappings": true}}'
    cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$1",
  "plugins": [
    {
      "type": "$2",
      "bridge": "$3",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$4"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$5"}$([ "$2" = corral-cni ] && echo ',
      "capabilities": {"portMappings": true}')
    }$portmap
  ]
}
EOF
}

# ---- corrald -------------------------------------------------------------------------------
conflist "$crl_net" corral-cni "$crl_br" "$crl_subnet" "$crl/cni-data" >"$crl/net.d/10-bench.conflist"
: >"$crl/config.toml"   # no host config
if [[ " $RUNTIMES " == *" corral "* ]]; then
    "$bin/corrald" --config "$crl/config.toml" --root "$crl/root" --state "$crl/state" \
        --listen "$crl/corral.sock" --cgroup-parent "$crl_cgroup" --shim-path "$bin/corral-shim" \
        --cni-conf-dir "$crl/net.d" --cni-bin-dir "$crl/cni-bin" >"$crl/corrald.log" 2>&1 &
    crl_pid=$!
fi

# ---- containerd ----------------------------------------------------------------------------
conflist "$ctr_net" bridge "$ctr_br" "$ctr_subnet" "$ctr/cni-data" >"$ctr/net.d/10-bench.conflist"
mkdir -p "$ctr/certs.d/$registry"
cat >"$ctr/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
cat >"$ctr/config.toml" <<EOF
version = 2
root = "$ctr/root"
state = "$ctr/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$ctr/containerd.sock"
[ttrpc]
  address = "$ctr/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctr/opt"
[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "$ctr/runc-v1"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ctr/net.d"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$ctr/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$ctr/runc"
        SystemdCgroup = false
EOF
if [[ " $RUNTIMES " == *" containerd "* ]]; then
    containerd --config "$ctr/config.toml" >"$ctr/containerd.log" 2>&1 &
    ctr_pid=$!
fi

# ---- the scenarios, alternating runtimes -----------------------------------------------------
common=(--image "$busybox" --pull-image "$multilayer" -n "$N" --parallelism "$PAR" --pods "$PODS"
        --pull-reps "$PULL_REPS" --netns-baseline "$work/netns.before"
        --stream-sessions "$STREAM_SESSIONS" --stream-mib "$STREAM_MIB" --stream-reps "$STREAM_REPS")
run_corral() {
    "$bench" cri --socket "$crl/corral.sock" --label corral --json "$work/corral.json" "${common[@]}" \
        --daemon-pid "$crl_pid" --shim-name corral-shim --shim-match "$crl/state" \
        --log-dir "$crl/logs" --watch-dir "$crl" --bridge "$crl_br" --cni-data-dir "$crl/cni-data" \
        --watch-cgroup "$crl_cgroup" "$@"
}
run_containerd() {
    "$bench" cri --socket "$ctr/containerd.sock" --label containerd --json "$work/containerd.json" "${common[@]}" \
        --daemon-pid "$ctr_pid" --shim-name containerd-shim-runc-v2 --shim-match "$ctr/containerd.sock" \
        --log-dir "$ctr/logs" --watch-dir "$ctr" --bridge "$ctr_br" --cni-data-dir "$ctr/cni-data" \
        --cgroup-parent "$ctr_cgroup" --pre-pull "$pause" "$@"
}
start=$(date +%s)
touch "$work/corral.out" "$work/containerd.out"
for scenario in $SCENARIOS; do
    [ "$scenario" = cni ] && continue
    if [ -n "$crl_pid" ]; then
        log "scenario $scenario: corral"
        run_corral --scenarios "$scenario" >>"$work/corral.out"
    fi
    if [ -n "$ctr_pid" ]; then
        log "scenario $scenario: containerd"
        run_containerd --scenarios "$scenario" >>"$work/containerd.out"
    fi
done

# ---- CNI: corral-cni vs bridge + host-local + portmap ----------------------------------------
conflist "crlcni-$rand" corral-cni "$cni_crl_br" "$cni_crl_subnet" "$work/cni-data-crl" >"$work/cni-corral.conflist"
conflist "ctrcni-$rand" bridge "$cni_ctr_br" "$cni_ctr_subnet" "$work/cni-data-ctr" >"$work/cni-reference.conflist"
if [[ " $SCENARIOS " == *" cni "* && -n "$crl_pid" ]]; then
log "CNI: corral-cni"
"$bench" cni --conflist "$work/cni-corral.conflist" --bin-dir "$crl/cni-bin" --label corral \
    --json "$work/corral.json" -n "$CNI_N" --port-base $((30000 + 0x$rand % 1000)) --bridge "$cni_crl_br" >>"$work/corral.out"
fi
if [[ " $SCENARIOS " == *" cni "* && -n "$ctr_pid" ]]; then
log "CNI: reference chain"
"$bench" cni --conflist "$work/cni-reference.conflist" --bin-dir /usr/lib/cni --label containerd \
    --json "$work/containerd.json" -n "$CNI_N" --port-base $((31000 + 0x$rand % 1000)) --bridge "$cni_ctr_br" >>"$work/containerd.out"
fi
end=$(date +%s)

kernel=$(uname -r)
cgroups=v1; [ -f /sys/fs/cgroup/cgroup.controllers ] && cgroups=v2
echo "==== per runtime: min, median, p90, max (ms) ===="
cat "$work/corral.out" "$work/containerd.out"
echo
if [ -z "$crl_pid" ] || [ -z "$ctr_pid" ]; then
    log "one runtime only (RUNTIMES=$RUNTIMES): no side-by-side table"
    exit 0
fi
echo "==== corral vs containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | awk 'NR==1{print $3}') + containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins) ===="
echo "$(nproc) cores, kernel $kernel, cgroup $cgroups; N=$N parallelism=$PAR pods=$PODS pull reps=$PULL_REPS CNI N=$CNI_N stream sessions=$STREAM_SESSIONS MiB=$STREAM_MIB reps=$STREAM_REPS; scenarios took $((end - start)) s"
echo "times in ms (median, p90); ratio = corral / containerd of medians"
"$bench" report "$work/corral.json" "$work/containerd.json"
