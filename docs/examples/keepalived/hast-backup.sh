#!/usr/bin/env bash
# hast-backup.sh RESOURCE — keepalived notify_backup (and notify_stop; hast-fault.sh
# calls it too): stop using RESOURCE and make this node secondary
# (docs/failover-keepalived.md). Like FreeBSD's ucarp_down.sh: stop a still-running
# hast-master.sh first, stop the application, unmount, detach, then
# hastctl role secondary RESOURCE.
# Settings: below, overridable in /etc/default/hast-keepalived (the same as hast-master.sh).
set -uo pipefail

RES=${1:?usage: hast-backup.sh RESOURCE}
HASTCTL=/usr/local/sbin/hastctl
NBD_DEVICE=/dev/nbd0
MOUNTPOINT=/srv
APP_STOP=""               # e.g. "systemctl stop postgresql"
LOCKDIR=/run/hast-keepalived
# shellcheck source=/dev/null
[ -r /etc/default/hast-keepalived ] && . /etc/default/hast-keepalived

TAG=${HAST_FAILOVER_TAG:-hast-backup}
log() { logger -t "${TAG}[$RES]" -p daemon.notice -- "$*"; }
fail() {
    logger -t "${TAG}[$RES]" -p daemon.err -- "$*"
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
