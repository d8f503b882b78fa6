#!/usr/bin/env bash
# Registries and images for corral's integration tests.
#
#   hack/test-env.sh start DIR   two registries on 127.0.0.1 (open, and basic
#                                auth corral/s3cret), images pushed; writes
#                                DIR/env (also printed) to be sourced; the
#                                gRPC clients of hack/install-test-clients.sh
#   hack/test-env.sh stop DIR    stops both registries and removes DIR
#
# Run it, don't source it: `hack/test-env.sh start "$d" >/dev/null; . "$d/env"`
# or `eval "$(hack/test-env.sh start "$d")"`.
set -euo pipefail

hack=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
AUTH_USER=corral
AUTH_PASS=s3cret

stop() {
    "$hack/registry.sh" stop "$1/open"
    "$hack/registry.sh" stop "$1/auth"
    rm -rf -- "$1"
}

start() {
    local dir=$1 open auth
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    trap 'echo "test-env.sh: start failed, cleaning up" >&2; stop "$dir"' ERR
    open=$("$hack/registry.sh" start "$dir/open")
    auth=$("$hack/registry.sh" start "$dir/auth" --htpasswd "$AUTH_USER:$AUTH_PASS")
    "$hack/build-images.py" "$open" --out "$dir/images.json" >"$dir/push.log"
    "$hack/build-images.py" "$auth" --user "$AUTH_USER:$AUTH_PASS" \
        --only corral/busybox >>"$dir/push.log"
    grpcio=$("$hack/install-test-clients.sh")
    cat >"$dir/env" <<EOF
export CORRAL_TEST_REGISTRY=$open
export CORRAL_TEST_AUTH_REGISTRY=$auth
export CORRAL_TEST_AUTH_USER=$AUTH_USER
export CORRAL_TEST_AUTH_PASS=$AUTH_PASS
export CORRAL_TEST_IMAGES=$dir/images.json
export CORRAL_TEST_GRPCIO=$grpcio
EOF
    trap - ERR
    cat "$dir/env"
}

case "${1:-} $#" in
    "start 2") start "$2" ;;
    "stop 2") stop "$2" ;;
    *) echo "usage: $0 start|stop DIR" >&2; exit 1 ;;
esac
