#!/usr/bin/env bash
# Builds corral (release), installs corral-cni with a default network when the node has none,
# and runs corrald in the foreground with any extra flags given.
#
#   sudo hack/run.sh [corrald flags...]
#
# The default network is written only when /etc/cni/net.d holds no config: bridge corral0,
# 10.88.0.0/16, masquerade, hostPort mappings.
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
install -d -m 0755 "$bin_dir" "$conf_dir"
install -m 0755 "$cni" "$bin_dir/corral-cni"

if ! ls "$conf_dir"/*.conflist "$conf_dir"/*.conf "$conf_dir"/*.json >/dev/null 2>&1; then
    cat >"$conf_dir/10-corral.conflist" <<'JSON'
{
  "cniVersion": "1.1.0",
  "name": "corral",
  "plugins": [
    {
      "type": "corral-cni",
      "bridge": "corral0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "10.88.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      },
      "capabilities": { "portMappings": true }
    }
  ]
}
JSON
    echo "hack/run.sh: wrote $conf_dir/10-corral.conflist" >&2
fi

exec target/release/corrald --shim-path "$shim" --cni-conf-dir "$conf_dir" --cni-bin-dir "$bin_dir" "$@"
