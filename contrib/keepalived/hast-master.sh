#!/usr/bin/env bash
# hast-master.sh RESOURCE [SETTINGS] — keepalived notify_master: make this node primary
# for RESOURCE and start using it (docs/failover-keepalived.md). Like FreeBSD's ucarp_up.sh:
#   1. wait until the old primary's connection has dropped (status no longer
#      "complete" while we are secondary) — if it is still connected after $WAIT_PEER
#      seconds the old primary is alive: give up rather than make two primaries;
#   2. hastctl role primary RESOURCE;
#   3. attach the NBD export, fsck, mount, start the application.
# Settings: below, overridable in SETTINGS (default /etc/default/hast-keepalived).
set -uo pipefail

RES=${1:?usage: hast-master.sh RESOURCE [SETTINGS]}
HASTCTL=/usr/local/sbin/hastctl
WAIT_PEER=30              # seconds; more than hast.conf's timeout (default 20)
NBD_DEVICE=/dev/nbd0      # empty: do not attach a kernel NBD device
MOUNTPOINT=/srv           # empty: do not fsck and mount
APP_START=""              # e.g. "systemctl start postgresql"
LOCKDIR=/run/hast-keepalived
LOG_FILE=""               # also append log lines here (syslog gets them in any case)
SETTINGS=${2:-${HAST_KEEPALIVED_SETTINGS:-/etc/default/hast-keepalived}}
# shellcheck source=/dev/null
[ -r "$SETTINGS" ] && . "$SETTINGS"

say() {
    logger -t "hast-master[$RES]" -p "daemon.$1" -- "$2" 2>/dev/null
    [ -z "$LOG_FILE" ] || echo "$(date '+%F %T.%N') hast-master[$RES]: $2" >>"$LOG_FILE"
}
log() { say notice "$*"; }
fail() {
    say err "$*"
    exit 1
}

# One failover script per resource at a time; a backup/fault script kills us first.
mkdir -p "$LOCKDIR"
echo $$ >"$LOCKDIR/$RES.master.pid"
trap 'rm -f "$LOCKDIR/$RES.master.pid"' EXIT
exec 9>"$LOCKDIR/$RES.lock"
flock -w 120 9 || fail "another failover script holds $LOCKDIR/$RES.lock"

# The value of a top-level key in `hastctl status --json RESOURCE` (one resource).
json_field() { sed -n "s/^    \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p"; }

log "becoming primary"
connected=yes
for ((i = 0; i < WAIT_PEER; i++)); do
    json=$("$HASTCTL" status --json "$RES") || fail "hastctl status failed (is hastd running?)"
    role=$(json_field role <<<"$json")
    status=$(json_field status <<<"$json")
    if [ "$role" != secondary ] || [ "$status" != complete ]; then
        connected=no
        break
    fi
    sleep 1
done
[ "$connected" = no ] ||
    fail "the old primary is still connected after ${WAIT_PEER}s; not taking over"

"$HASTCTL" role primary "$RES" || fail "hastctl role primary $RES failed (exit $?)"
log "role primary"

export_addr=$("$HASTCTL" status --json "$RES" | json_field export)
case "$export_addr" in
unix://*)
    export_sock=${export_addr#unix://}
    for ((i = 0; i < 50; i++)); do
        [ -S "$export_sock" ] && break
        sleep 0.1
    done
    ;;
*)
    # A TCP export (clients reach it on the virtual IP): nothing to attach here.
    export_sock=""
    ;;
esac

if [ -n "$NBD_DEVICE" ] && [ -n "$export_sock" ]; then
    [ -S "$export_sock" ] || fail "export $export_sock did not appear"
    modprobe nbd 2>/dev/null || true
    nbd-client -unix "$export_sock" "$NBD_DEVICE" ||
        fail "nbd-client -unix $export_sock $NBD_DEVICE failed"
    if [ -n "$MOUNTPOINT" ]; then
        fsck -p "$NBD_DEVICE"
        rc=$?
        if [ "$rc" -ge 4 ]; then
            fail "fsck -p $NBD_DEVICE exit $rc: repair by hand, then mount"
        fi
        mount "$NBD_DEVICE" "$MOUNTPOINT" || fail "mount $NBD_DEVICE $MOUNTPOINT failed"
        log "mounted $NBD_DEVICE on $MOUNTPOINT"
    fi
fi
if [ -n "$APP_START" ]; then
    bash -c "$APP_START" || fail "'$APP_START' failed"
fi
log "primary and in service"
