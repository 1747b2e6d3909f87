#!/usr/bin/env bash
# Certificates and keys for the TLS + SuperNode-authentication overlay
# (deploy/docker-compose.tls.yml, or `edgefed compose --fleet F --tls`):
#
#   deploy/certs.sh [NUM_SUPERNODES] [DIR]      # defaults: 6 (the `compose` fleet), deploy/certs
#
#   ca.crt, ca.key                 a private CA (ca.key never goes into a container)
#   superlink.crt, superlink.key   the SuperLink's server certificate, signed by the CA, for
#                                  DNS:superlink, DNS:localhost, IP:127.0.0.1 and whatever
#                                  EDGEFED_SUPERLINK_SAN adds ("DNS:link.example.org,IP:10.0.0.5")
#                                  so that SuperNodes on other machines can verify it
#   supernode-I, supernode-I.pub   SuperNode I's ECDSA P-384 key pair in OpenSSH format, as
#                                  flower-supernode --auth-supernode-private-key and
#                                  flwr supernode register expect
#
# Existing files are kept (run again with a larger N to add SuperNodes). The keys the containers
# read are made readable by the image's user (uid 10001) when run as root, else world-readable.
# The folder gets a .gitignore of "*": none of this belongs in version control.
set -euo pipefail

n=${1:-6}
dir=${2:-${EDGEFED_CERTS:-$(dirname "$0")/certs}}
days=${EDGEFED_CERT_DAYS:-365}
container_uid=10001
sans="DNS:superlink,DNS:localhost,IP:127.0.0.1${EDGEFED_SUPERLINK_SAN:+,$EDGEFED_SUPERLINK_SAN}"

case $n in '' | *[!0-9]*) echo "certs: NUM_SUPERNODES must be a number, got '$n'" >&2; exit 2 ;; esac
mkdir -p "$dir"
cd "$dir"
echo "*" >.gitignore

if [ ! -f ca.crt ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
        -keyout ca.key -out ca.crt -days "$days" -subj "/CN=edgefed fleet CA" 2>/dev/null
    chmod 0600 ca.key
    echo "certs: new CA in $dir/ca.crt"
fi

if [ ! -f superlink.crt ]; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -sha384 \
        -keyout superlink.key -out superlink.csr -subj "/CN=superlink" 2>/dev/null
    openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha384 \
        -days "$days" -out superlink.crt -extfile <(printf '%s\n' \
            "subjectAltName=$sans" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth") 2>/dev/null
    rm -f superlink.csr ca.srl
    echo "certs: SuperLink certificate for $sans"
fi

for i in $(seq 0 $((n - 1))); do
    [ -f "supernode-$i" ] || ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "supernode-$i"
done
echo "certs: $n SuperNode key pairs (supernode-0 .. supernode-$((n - 1)))"

chmod 0644 ca.crt superlink.crt supernode-*.pub
if [ "$(id -u)" = 0 ]; then
    chown "$container_uid:$container_uid" superlink.key supernode-*[0-9]
    chmod 0600 superlink.key supernode-*[0-9]
else
    chmod 0644 superlink.key supernode-*[0-9]
    echo "certs: not root, so the private keys are world-readable for the containers' user;" \
        "keep $dir private" >&2
fi
