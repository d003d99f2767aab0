#!/usr/bin/env bash
# hast-backup.sh RESOURCE [SETTINGS] — keepalived notify_backup (and notify_stop; hast-fault.sh
# calls it too): stop using RESOURCE and make this node secondary
# (docs/failover-keepalived.md). Like FreeBSD's ucarp_down.sh: stop a still-running
# hast-master.sh first, stop the application, unmount, detach, then
# hastctl role secondary RESOURCE.
# Settings: below, overridable in SETTINGS (default /etc/default/hast-keepalived, the
# same file as hast-master.sh's).
set -uo pipefail

RES=${1:?usage: hast-backup.sh RESOURCE [SETTINGS]}
HASTCTL=/usr/local/sbin/hastctl
NBD_DEVICE=/dev/nbd0
MOUNTPOINT=/srv
APP_STOP=""               # e.g. "systemctl stop postgresql"
LOCKDIR=/run/hast-keepalived
LOG_FILE=""
SETTINGS=${2:-${HAST_KEEPALIVED_SETTINGS:-/etc/default/hast-keepalived}}
# shellcheck source=/dev/null
[ -r "$SETTINGS" ] && . "$SETTINGS"

TAG=${HAST_FAILOVER_TAG:-hast-backup}
say() {
    logger -t "${TAG}[$RES]" -p "daemon.$1" -- "$2" 2>/dev/null
    [ -z "$LOG_FILE" ] || echo "$(date '+%F %T.%N') ${TAG}[$RES]: $2" >>"$LOG_FILE"
}
log() { say notice "$*"; }
fail() {
    say err "$*"
    exit 1
}

mkdir -p "$LOCKDIR"
# A master script still waiting or mounting: stop it (it exits after its current command).
if [ -s "$LOCKDIR/$RES.master.pid" ]; then
    pid=$(cat "$LOCKDIR/$RES.master.pid")
    if kill -TERM "$pid" 2>/dev/null; then
        log "stopped hast-master.sh (pid $pid)"
    fi
fi
exec 9>"$LOCKDIR/$RES.lock"
flock -w 120 9 || fail "another failover script holds $LOCKDIR/$RES.lock"

log "becoming secondary"
if [ -n "$APP_STOP" ]; then
    bash -c "$APP_STOP" || log "'$APP_STOP' failed; going on"
fi
if [ -n "$MOUNTPOINT" ] && mountpoint -q "$MOUNTPOINT"; then
    umount "$MOUNTPOINT" || umount -f "$MOUNTPOINT" || umount -l "$MOUNTPOINT" ||
        log "cannot unmount $MOUNTPOINT"
fi
if [ -n "$NBD_DEVICE" ] && [ -b "$NBD_DEVICE" ]; then
    nbd-client -c "$NBD_DEVICE" >/dev/null 2>&1 && nbd-client -d "$NBD_DEVICE" >/dev/null 2>&1
fi
"$HASTCTL" role secondary "$RES" || fail "hastctl role secondary $RES failed (exit $?)"
log "role secondary"
