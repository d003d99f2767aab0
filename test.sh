#!/usr/bin/env bash
# Runs every test of hast. On a fresh Debian machine, as root, it first installs the Debian
# packages the tests drive (real NBD clients, fio, nftables, ...); then it checks formatting
# and lints and runs cargo's tests (unit, property and process tests).
#
# Tests that need root (network namespaces, loop devices) skip with a printed reason when
# not run as root, and fail instead when CI is set.
set -euo pipefail
cd "$(dirname "$0")"

packages=(qemu-utils libnbd-bin nbdkit fio fuse3 python3-libnbd iproute2 nftables util-linux e2fsprogs strace
    keepalived iputils-ping resource-agents libxml2-utils corosync pacemaker pacemaker-cli-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "test.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test.sh: not root, cannot install: ${missing[*]} (tests that need them will skip)"
    fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy -p hast-core --all-targets --features mutations --locked -- -D warnings
cargo test --workspace --locked
# The simulator with each guarded rule switched off in turn: each must be caught.
cargo test -p hast-core --features mutations --locked --test sim every_mutation
