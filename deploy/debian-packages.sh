#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are missing, where this machine
# can (apt-get, run as root); elsewhere it names what to install and leaves it to the user.
#
#   deploy/debian-packages.sh [--dry-run] PACKAGE...
#
# Present packages cost one dpkg-query call and nothing else. Missing ones are installed with
# `apt-get update` + `apt-get install --no-install-recommends` (--dry-run prints that command
# instead). Exit status: 0 when every package is installed afterwards, or when this machine
# cannot install them (not root, no apt-get, not Debian: a message on stderr says what to install;
# whatever needs a package then fails with its own message); 1 when apt-get itself failed;
# 2 on bad usage.
set -euo pipefail

dry_run=0
if [[ ${1:-} == --dry-run ]]; then
    dry_run=1
    shift
fi
if (( $# == 0 )); then
    echo "usage: $0 [--dry-run] PACKAGE..." >&2
    exit 2
fi

if ! command -v dpkg-query >/dev/null; then
    echo "system: not a Debian system (no dpkg-query): install the equivalents of: $*" >&2
    exit 0
fi

declare -A installed=()
while read -r status name; do
    [[ $status == ii ]] && installed[$name]=1
done < <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "$@" 2>/dev/null || true)
missing=()
for package in "$@"; do
    [[ -n ${installed[$package]:-} ]] || missing+=("$package")
done
if (( ${#missing[@]} == 0 )); then
    echo "system: installed: $*"
    exit 0
fi

install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if (( EUID != 0 )) || ! command -v apt-get >/dev/null; then
    why="not root"
    (( EUID != 0 )) || why="no apt-get"
    echo "system: missing Debian packages: ${missing[*]} (cannot install them here: $why);" \
         "install them with: sudo apt-get install ${missing[*]}" >&2
    exit 0
fi
if (( dry_run )); then
    echo "system: would run: apt-get update -qq && ${install[*]}"
    exit 0
fi
echo "system: installing ${missing[*]}"
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null; }; then
    echo "system: apt-get could not install ${missing[*]} (see above)" >&2
    exit 1
fi
