#!/usr/bin/env bash
# Builds corral (release), installs corral-cni with a default network when the node has none,
# and runs corrald in the foreground with any extra flags given.
#
#   sudo hack/run.sh [corrald flags...]
#
# The default network is written only when /etc/cni/net.d holds no config (*.conflist, *.conf
# or *.json): bridge corral0, 10.88.0.0/16, masquerade, hostPort mappings (hack/install-cni.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "hack/run.sh: corrald needs root" >&2
    exit 1
fi

hack/install-deps.sh
cargo build --release --bins
shim=$(hack/build-shim.sh)
cni=$(hack/build-cni.sh)

bin_dir=/opt/cni/bin
conf_dir=/etc/cni/net.d
hack/install-cni.sh "$cni" "$bin_dir" "$conf_dir"

exec target/release/corrald --shim-path "$shim" --cni-conf-dir "$conf_dir" --cni-bin-dir "$bin_dir" "$@"
