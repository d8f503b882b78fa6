#!/usr/bin/env bash
# Installs corral-cni into a CNI bin dir and writes corral's default network into a CNI conf
# dir unless the node already has a network config there.
#
#   hack/install-cni.sh CORRAL_CNI_BINARY BIN_DIR CONF_DIR
#
# The default network (bridge corral0, 10.88.0.0/16, masquerade, hostPort mappings) goes to
# CONF_DIR/10-corral.conflist only when CONF_DIR holds no *.conflist, *.conf or *.json: corrald
# uses the first config in lexical order, and 10-corral.conflist could come before the node's.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 CORRAL_CNI_BINARY BIN_DIR CONF_DIR" >&2
    exit 2
fi
cni=$1 bin_dir=$2 conf_dir=$3

install -d -m 0755 "$bin_dir" "$conf_dir"
install -m 0755 "$cni" "$bin_dir/corral-cni"

has_config() {
    local f
    for f in "$conf_dir"/*.conflist "$conf_dir"/*.conf "$conf_dir"/*.json; do
        [ -e "$f" ] && return 0
    done
    return 1
}

if has_config; then
    exit 0
fi
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
echo "install-cni.sh: wrote $conf_dir/10-corral.conflist" >&2
