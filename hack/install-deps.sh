#!/usr/bin/env bash
# Install the Debian packages corral's build and integration tests need.
# Idempotent: installs only what is missing and runs `apt-get update` only then.
# Package services (docker-registry's :5000 daemon) are kept from starting.
set -euo pipefail

pkgs=(protobuf-compiler docker-registry busybox-static zstd apache2-utils
      iproute2 iptables jq curl ca-certificates
      containernetworking-plugins containerd runc)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
command -v python3 >/dev/null || missing+=(python3)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: must run as root" >&2
    exit 1
fi

# Keep maintainer scripts from starting services (no systemd here: they use
# invoke-rc.d, which honours policy-rc.d). Leave an existing policy alone.
policy=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
fi
registry_pids() { pgrep -x docker-registry 2>/dev/null | sort || true; }
before=$(registry_pids)

cleanup() {
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
    # Belt and braces: stop a packaged registry (the one serving
    # /etc/docker/registry/config.yml) that appeared during this install.
    local pid
    for pid in $(comm -13 <(echo "$before") <(registry_pids)); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q /etc/docker/registry/config.yml; then
            echo "install-deps: stopping packaged docker-registry (pid $pid)" >&2
            kill "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
"${apt[@]}" update
"${apt[@]}" install --no-install-recommends "${missing[@]}"
