#!/usr/bin/env bash
# Run Debian's docker-registry (distribution 2.8) on 127.0.0.1 for tests.
#
#   hack/registry.sh start DIR [--htpasswd USER:PASS]   prints 127.0.0.1:PORT
#   hack/registry.sh stop DIR                            stops it, removes DIR
#
# DIR holds config.yml, data/, htpasswd, registry.pid and registry.log.
set -euo pipefail

BIN=/usr/bin/docker-registry

die() { echo "registry.sh: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Is $1 alive and not a zombie?
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

write_config() { # dir port auth(0/1)
    cat >"$1/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $1/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
  secret: corral-test-$2
EOF
    if [ "$3" = 1 ]; then
        cat >>"$1/config.yml" <<EOF
auth:
  htpasswd:
    realm: corral-test
    path: $1/htpasswd
EOF
    fi
}

start() {
    local dir=$1 auth=0
    shift
    case "${1:-}" in
        --htpasswd)
            [ $# -eq 2 ] && [[ $2 == *:* ]] || die "--htpasswd needs USER:PASS"
            auth=1 ;;
        "") ;;
        *) die "unknown option: $1" ;;
    esac
    [ -x "$BIN" ] || die "$BIN missing (run hack/install-deps.sh)"
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    if [ "$auth" = 1 ]; then
        local user=${2%%:*} pass=${2#*:}
        htpasswd -Bbn "$user" "$pass" >"$dir/htpasswd" 2>/dev/null || die "htpasswd failed"
    fi

    local attempt port pid code i
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        write_config "$dir" "$port" "$auth"
        "$BIN" serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/registry.pid"
        for i in $(seq 100); do
            alive "$pid" || break
            # Another process may own the port: only trust it once ours listens.
            grep -q "listening on 127.0.0.1:$port" "$dir/registry.log" || { sleep 0.1; continue; }
            code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/" || true)
            if [ "$code" = 200 ] || { [ "$auth" = 1 ] && [ "$code" = 401 ]; }; then
                echo "127.0.0.1:$port"
                return 0
            fi
            sleep 0.1
        done
        if alive "$pid"; then
            kill "$pid" 2>/dev/null || true
            die "registry did not answer on 127.0.0.1:$port; see $dir/registry.log"
        fi
        grep -q 'address already in use' "$dir/registry.log" ||
            die "registry exited (attempt $attempt); see $dir/registry.log"
        echo "registry.sh: port $port taken, retrying" >&2
    done
    die "could not find a free port"
}

stop() {
    local dir=$1 pid i
    [ -d "$dir" ] || return 0
    [ -f "$dir/config.yml" ] || die "$dir does not look like a registry dir"
    if [ -f "$dir/registry.pid" ]; then
        pid=$(cat "$dir/registry.pid")
        # Only signal our registry: guard against a recycled pid.
        if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
                grep -qF "serve $(cd "$dir" && pwd)/config.yml"; then
            kill "$pid" 2>/dev/null || true
            for i in $(seq 100); do
                alive "$pid" || break
                sleep 0.1
            done
            if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    fi
    rm -rf -- "$dir"
}

case "${1:-}" in
    start) [ $# -ge 2 ] || die "usage: $0 start DIR [--htpasswd USER:PASS]"; shift; start "$@" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 start DIR [--htpasswd USER:PASS] | stop DIR" ;;
esac
