#!/usr/bin/env bash
# demo.sh: the main job of hast in one command. On this host it builds hast, starts two
# nodes (a and b) of one replicated 1 GiB resource "shared", makes a primary and b
# secondary, writes and reads data through the NBD export with real clients, checks that
# the secondary holds the same bytes, and leaves the pair running, ready to use.
#
#   ./demo.sh               start (or restart) the demo
#   ./demo.sh stop          stop both daemons (SIGTERM via their pidfiles)
#   ./demo.sh stop --purge  stop them and remove the demo directory
#
# Environment: DEMO_DIR (default ./demo), CARGO_TARGET_DIR (default ./target).
# As root on Debian it installs what it needs (qemu-utils, libnbd-bin) if missing.
#
# The daemons run as `hastd -F` (foreground mode, started in the background by this
# script) so that their logs land in DEMO_DIR/a.log and DEMO_DIR/b.log; without -F hastd
# detaches and logs to syslog.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)

DEMO_DIR=$(realpath -m "${DEMO_DIR:-$ROOT/demo}")
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
HASTD=$TARGET_DIR/release/hastd
HASTCTL=$TARGET_DIR/release/hastctl
CONF=$DEMO_DIR/hast.conf
RES=shared
SIZE=1G
# Files of a demo, the only ones `stop --purge` and a restart remove.
DEMO_FILES=(hast.conf a.img b.img a.log b.log a.pid b.pid a.ctl b.ctl a.sock b.sock
    random.bin readback.bin)

say() { printf '\n==> %s\n' "$*"; }

log_tails() {
    local node
    for node in a b; do
        if [ -s "$DEMO_DIR/$node.log" ]; then
            echo "--- last lines of $DEMO_DIR/$node.log ---" >&2
            tail -n 20 "$DEMO_DIR/$node.log" >&2
        fi
    done
}

die() {
    echo >&2
    echo "demo.sh: FAILED: $*" >&2
    log_tails
    if [ -n "$(running_pid a)$(running_pid b)" ]; then
        echo "demo.sh: the daemons are left running for inspection; './demo.sh stop' stops them." >&2
    fi
    exit 1
}

trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

ctl() {
    local node=$1
    shift
    "$HASTCTL" -c "$CONF" --node "$node" "$@"
}

# The pid in DEMO_DIR/<node>.pid if that process is a running hastd, else nothing.
running_pid() {
    local pidfile=$DEMO_DIR/$1.pid pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    case $pid in '' | *[!0-9]*) return 0 ;; esac
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = hastd ]; then
        echo "$pid"
    fi
}

stop_demo() {
    local node pid i
    # The primary first, so the secondary does not see its primary vanish mid-write.
    for node in a b; do
        pid=$(running_pid "$node")
        if [ -z "$pid" ]; then
            rm -f "$DEMO_DIR/$node.pid"
            continue
        fi
        echo "stopping hastd --node $node (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        # hastd puts its resources to init (bounded by 60 s) before it exits.
        for ((i = 0; i < 900; i++)); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then
            echo "demo.sh: hastd --node $node (pid $pid) did not exit after SIGTERM" >&2
            return 1
        fi
    done
}

purge_demo() {
    local f
    for f in "${DEMO_FILES[@]}"; do
        rm -f "${DEMO_DIR:?}/$f"
    done
}

if [ "${1:-}" = stop ]; then
    trap - ERR
    case "${2:-}" in
        '') stop_demo ;;
        --purge)
            stop_demo
            purge_demo
            rmdir "$DEMO_DIR" 2>/dev/null || echo "demo.sh: left $DEMO_DIR (it holds other files)"
            ;;
        *) echo "usage: $0 [stop [--purge]]" >&2; exit 64 ;;
    esac
    echo "demo stopped"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [stop [--purge]]" >&2
    exit 64
fi

START=$SECONDS

# --- 1. Tools ----------------------------------------------------------------------------
say "checking tools"
missing=()
command -v qemu-io >/dev/null || missing+=(qemu-utils)
{ command -v nbdcopy >/dev/null && command -v nbdinfo >/dev/null; } || missing+=(libnbd-bin)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        die "missing Debian packages: ${missing[*]} (run as root to install them, or: apt-get install ${missing[*]})"
    fi
fi
command -v cargo >/dev/null || die "cargo is not installed (see https://rustup.rs)"
echo "qemu-io, nbdcopy, nbdinfo, cargo: present"

# --- 2. Build ----------------------------------------------------------------------------
say "building hast (cargo build --release)"
cargo build --release
if [ ! -x "$HASTD" ] || [ ! -x "$HASTCTL" ]; then
    die "built binaries not found in $TARGET_DIR/release"
fi

# --- 3. A fresh demo directory -----------------------------------------------------------
say "preparing $DEMO_DIR"
if [ -e "$CONF" ] || [ -e "$DEMO_DIR/a.pid" ] || [ -e "$DEMO_DIR/b.pid" ]; then
    echo "stopping the previous demo"
    stop_demo || die "cannot stop the previous demo"
    purge_demo
fi
# UNIX socket paths are limited to 107 bytes.
[ ${#DEMO_DIR} -le 96 ] || die "DEMO_DIR is too long for UNIX socket paths: $DEMO_DIR"
mkdir -p "$DEMO_DIR"

port_free() {
    if command -v ss >/dev/null; then
        if ss -Hltn "sport = :$1" | grep -q .; then return 1; fi
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 1; fi
    fi
    return 0
}
pick_port() {
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        [ "$p" -lt $(($1 + 100)) ] || die "no free TCP port in $1..$p"
    done
    echo "$p"
}
PORT_A=$(pick_port 18457)
PORT_B=$(pick_port 28457)

cat >"$CONF" <<EOF
# Written by demo.sh: two nodes, a and b, on this host (hastd/hastctl --node a|b).
replication memsync
timeout 5

on a {
        control unix://$DEMO_DIR/a.ctl
        pidfile $DEMO_DIR/a.pid
        listen tcp4://127.0.0.1:$PORT_A
}
on b {
        control unix://$DEMO_DIR/b.ctl
        pidfile $DEMO_DIR/b.pid
        listen tcp4://127.0.0.1:$PORT_B
}

resource $RES {
        on a {
                local $DEMO_DIR/a.img
                remote tcp4://127.0.0.1:$PORT_B
                export unix://$DEMO_DIR/a.sock
        }
        on b {
                local $DEMO_DIR/b.img
                remote tcp4://127.0.0.1:$PORT_A
                export unix://$DEMO_DIR/b.sock
        }
}
EOF
"$HASTD" -t -c "$CONF" --node a >/dev/null
"$HASTD" -t -c "$CONF" --node b >/dev/null
echo "config $CONF (peer ports $PORT_A and $PORT_B)"

# --- 4. Backing files and metadata -------------------------------------------------------
say "creating two $SIZE sparse backing files and their hast metadata"
for node in a b; do
    truncate -s "$SIZE" "$DEMO_DIR/$node.img"
    ctl "$node" create "$RES"
done
ctl a dump "$RES"

# --- 5. Daemons --------------------------------------------------------------------------
say "starting hastd for nodes a and b"
for node in a b; do
    setsid "$HASTD" -F -c "$CONF" --node "$node" -P "$DEMO_DIR/$node.pid" \
        </dev/null >>"$DEMO_DIR/$node.log" 2>&1 &
    pid=$!
    for ((i = 0; ; i++)); do
        ctl "$node" status >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || die "hastd --node $node exited during start-up"
        [ "$i" -lt 200 ] || die "hastd --node $node did not answer within 20 s"
        sleep 0.1
    done
    echo "hastd --node $node running (pid $pid, log $DEMO_DIR/$node.log)"
done

# --- 6. Roles ----------------------------------------------------------------------------
say "b becomes secondary, a becomes primary"
ctl b role secondary "$RES"
ctl a role primary "$RES"

wait_complete() {
    local node i json
    for node in a b; do
        for ((i = 0; ; i++)); do
            json=$(ctl "$node" status --json "$RES")
            grep -q '"status": "complete"' <<<"$json" && break
            [ "$i" -lt 1200 ] || die "node $node is not 'complete' after 120 s: $json"
            sleep 0.1
        done
    done
    # The initial synchronisation (if any) must be over before we compare the disks.
    for ((i = 0; ; i++)); do
        json=$(ctl a status --json "$RES")
        grep -q '"sync": null' <<<"$json" && break
        [ "$i" -lt 1200 ] || die "synchronisation still running after 120 s: $json"
        sleep 0.1
    done
}
wait_complete
echo "both nodes report 'complete' and no synchronisation is running"

# --- 7. Data through the export ----------------------------------------------------------
SOCK=$DEMO_DIR/a.sock
URI="nbd+unix:///$RES?socket=$SOCK"
say "the export: nbdinfo $URI"
nbdinfo "$URI" | grep -E 'export=|export-size|is_read_only|can_flush|can_fua|can_trim|can_zero' || true

say "qemu-io: write a pattern at 512 MiB, read it back and verify it"
qemu-io -f raw -c 'write -P 0xa5 512M 8M' -c 'read -P 0xa5 512M 8M' -c flush "$URI"

say "nbdcopy: 64 MiB of random data to offset 0, then the whole device back"
head -c 64M /dev/urandom >"$DEMO_DIR/random.bin"
nbdcopy "$DEMO_DIR/random.bin" "$URI"
qemu-io -f raw -c flush "$URI" >/dev/null
nbdcopy "$URI" "$DEMO_DIR/readback.bin"
cmp -n 64M "$DEMO_DIR/random.bin" "$DEMO_DIR/readback.bin" ||
    die "data read back through the export differs from what was written"
echo "read back what was written: identical"

# --- 8. The secondary holds the same bytes -----------------------------------------------
say "comparing the data areas of both nodes' backing files"
OFFSET=$(ctl a dump --json "$RES" | sed -n 's/^ *"offset": \([0-9]*\),*$/\1/p')
[ -n "$OFFSET" ] || die "cannot read the data offset from 'hastctl dump --json'"
echo "user data starts at byte $OFFSET of each backing file (hastctl dump --json: offset)"
cmp -i "$OFFSET:$OFFSET" "$DEMO_DIR/a.img" "$DEMO_DIR/b.img" ||
    die "the secondary's data area differs from the primary's"
cmp -i "0:$OFFSET" "$DEMO_DIR/readback.bin" "$DEMO_DIR/b.img" ||
    die "the secondary's data area differs from the device read through the export"
echo "primary data area == secondary data area == the device as served: identical"
rm -f "$DEMO_DIR/readback.bin"

# --- 9. Status and how to go on ----------------------------------------------------------
say "hastctl status"
echo "node a:"
ctl a status
echo "node b:"
ctl b status

cat <<EOF

Demo ready in $((SECONDS - START)) s: resource '$RES' is replicated from node a (primary)
to node b (secondary), replication memsync, peer ports $PORT_A and $PORT_B on 127.0.0.1.
Config: $CONF
Logs:   $DEMO_DIR/a.log, $DEMO_DIR/b.log

hastctl for node a (likewise --node b):
  $HASTCTL -c $CONF --node a status
  $HASTCTL -c $CONF --node a list
  $HASTCTL -c $CONF --node a status --json

Use the device: the primary serves it over NBD on the UNIX socket $SOCK
(export name '$RES'):
  qemu-io -f raw -c 'read -v 0 512' '$URI'
  nbdinfo '$URI'
  # as a file through FUSE, then as a block device through a loop device:
  mkdir -p /mnt/hast && nbdfuse /mnt/hast/ '$URI' &
  losetup -f --show /mnt/hast/nbd          # then mkfs.ext4 /dev/loopN; mount /dev/loopN /srv
  # with the kernel's NBD client (modprobe nbd; Debian package nbd-client):
  nbd-client -unix $SOCK /dev/nbd0
  # as a virtual machine's disk:
  qemu-system-x86_64 ... -drive 'file=$URI,format=raw'

Fail over by hand (a's export closes, then b serves $DEMO_DIR/b.sock):
  $HASTCTL -c $CONF --node a role secondary $RES
  $HASTCTL -c $CONF --node b role primary $RES

Stop: ./demo.sh stop   (./demo.sh stop --purge also removes $DEMO_DIR)
EOF
