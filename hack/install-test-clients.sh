#!/usr/bin/env bash
# Installs the gRPC clients the integration tests talk to corrald with, besides their own tonic
# client: grpc-python (grpc-core) from PyPI into target/test-clients/, once. Prints the
# directory to put on PYTHONPATH.
#
#   hack/install-test-clients.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A release whose grpc-core sends a unix: target's percent-encoded path as :authority.
GRPCIO=1.85.3
dir="$PWD/target/test-clients/grpcio-$GRPCIO"
if [ ! -f "$dir/.complete" ]; then
    rm -rf -- "$dir"
    mkdir -p "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --only-binary :all: --target "$dir" "grpcio==$GRPCIO" >&2
    touch "$dir/.complete"
fi
echo "$dir"
