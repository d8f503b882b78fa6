#!/bin/sh
# Runs corral-spdy against the real Go moby/spdystream over TCP, both ways:
# the Go client against our server, and our client against the Go server.
#
# Needs go and the spdystream sources (GOPATH layout), e.g. from Debian's
# golang-github-docker-spdystream-dev: SPDYSTREAM_GOPATH=/usr/share/gocode (default).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gopath_src=${SPDYSTREAM_GOPATH:-/usr/share/gocode}/src
[ -d "$gopath_src/github.com/moby/spdystream" ] || { echo "no spdystream under $gopath_src" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gopath/src/interop"
ln -s "$gopath_src/github.com" "$work/gopath/src/github.com"
cp "$here/main.go" "$work/gopath/src/interop/"
(cd "$work/gopath/src/interop" && GO111MODULE=off GOPATH="$work/gopath" go build -o "$work/go-interop" .)
target=${CARGO_TARGET_DIR:-$here/../../target}
cargo build -q -p corral-spdy --example interop
rs="$target/debug/examples/interop"
port=$((40000 + $$ % 10000))

"$rs" server "127.0.0.1:$port" & pid=$!
sleep 0.5
timeout 120 "$work/go-interop" client "127.0.0.1:$port"
wait $pid

timeout 130 "$work/go-interop" server "127.0.0.1:$((port + 1))" & pid=$!
sleep 0.5
timeout 120 "$rs" client "127.0.0.1:$((port + 1))"
wait $pid
