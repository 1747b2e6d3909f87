#!/bin/sh
# Register every SuperNode public key in /certs (supernode-*.pub, from deploy/certs.sh) with the
# SuperLink at $SUPERLINK over TLS ($ROOT_CERTIFICATES), so that SuperNode authentication
# (flower-superlink --enable-supernode-auth) admits them. A key the SuperLink already knows counts
# as registered. Run once per SuperLink start by the `register` service of the TLS overlay.
set -eu
: "${SUPERLINK:?SUPERLINK=host:port}" "${ROOT_CERTIFICATES:?ROOT_CERTIFICATES=CA file}"
FLWR_HOME=$(mktemp -d)
export FLWR_HOME
trap 'rm -rf "$FLWR_HOME"' EXIT
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fleet"

[superlink.fleet]
address = "$SUPERLINK"
root-certificates = "$ROOT_CERTIFICATES"
TOML
count=0
for key in /certs/supernode-*.pub; do
    [ -f "$key" ] || { echo "register: no SuperNode public keys in /certs" >&2; exit 1; }
    if out=$(flwr supernode register "$key" 2>&1); then
        echo "register: $key: $(echo "$out" | tail -n 1)"
    elif echo "$out" | grep -q "already in use"; then
        echo "register: $key: already registered"
    else
        echo "register: $key failed: $out" >&2
        exit 1
    fi
    count=$((count + 1))
done
echo "register: $count SuperNode keys registered with $SUPERLINK"
