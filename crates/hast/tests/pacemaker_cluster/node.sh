#!/bin/sh
# One Pacemaker node of a test cluster, run inside the node's network namespace with
# `unshare -m -u`: its own host name, and private copies of the directories corosync and
# Pacemaker keep state in (so several nodes share one machine), then corosync in the
# background and pacemakerd in the foreground (this process becomes pacemakerd).
#   node.sh NAME STATE_DIR COROSYNC_CONF OCF_AGENT_DIR
set -e
NAME=$1
D=$2
CONF=$3
AGENTS=$4
hostname "$NAME"
mkdir -p "$D/pcmk/cib" "$D/pcmk/pengine" "$D/pcmk/blackbox" "$D/pcmk/cores" \
    "$D/corosync" "$D/etc" "$D/log" "$D/logc" "$D/ocf"
chown -R hacluster:haclient "$D/pcmk" "$D/log"
chmod 750 "$D/pcmk/cib" "$D/pcmk/pengine" "$D/pcmk/blackbox" "$D/pcmk/cores"
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount --bind "$D/pcmk" /var/lib/pacemaker
mount --bind "$D/corosync" /var/lib/corosync
mount --bind "$D/etc" /etc/corosync
mkdir -p /var/log/pacemaker /var/log/cluster
mount --bind "$D/log" /var/log/pacemaker
mount --bind "$D/logc" /var/log/cluster
# The OCF agents as installed, plus provider "hast" (this project's agent).
for p in /usr/lib/ocf/resource.d/*; do
    mkdir -p "$D/ocf/$(basename "$p")"
    mount --bind "$p" "$D/ocf/$(basename "$p")"
done
mkdir -p "$D/ocf/hast"
mount --bind "$AGENTS" "$D/ocf/hast"
mount --rbind "$D/ocf" /usr/lib/ocf/resource.d
cp "$CONF" /etc/corosync/corosync.conf
corosync -f >"$D/corosync.out" 2>&1 &
sleep 1
exec pacemakerd -f >"$D/pacemaker.out" 2>&1
