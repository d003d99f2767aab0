#!/usr/bin/env bash
# hast-fence.sh fence|unfence RESOURCE — hast.conf's `fence` program for a keepalived pair
# (docs/failover-keepalived.md, "Fencing"). hastd runs it when the primary has lost its
# secondary, and holds every write until it answers; exit 0 lets writes go on without
# the secondary, anything else fails them (EIO) until the secondary is back.
#
# keepalived cannot demote the other node over a dead link, so this program fences the
# other way round: this node may write alone only while it is still the one the network
# sees, i.e. it holds the virtual IP *and* reaches TIEBREAKER (an address on the client
# network that both nodes normally reach, e.g. the default gateway). A primary cut off
# from the network fails here and stops writing, while the other node, which can still
# reach the tie-breaker, takes over and fences successfully: at most one node writes.
# (Both nodes reaching the tie-breaker but not each other, with both holding the VIP, is
# the one case this cannot tell apart: run VRRP on the client network, not only on the
# replication link, so that VRRP and the tie-breaker see the same network.)
#
# `unfence` has nothing to undo. Settings: below, overridable in the file named by
# HAST_KEEPALIVED_SETTINGS (default /etc/default/hast-keepalived, shared with the
# notify scripts).
set -uo pipefail

VERB=${1:?usage: hast-fence.sh fence|unfence RESOURCE}
RES=${2:?usage: hast-fence.sh fence|unfence RESOURCE}
VIP=""                    # the virtual IP of RESOURCE's VRRP instance, e.g. 10.0.0.100
TIEBREAKER=""             # e.g. the default gateway, 10.0.0.254
TIEBREAKER_TRIES=3        # pings, one second apart at most, before giving up
LOG_FILE=""
SETTINGS=${HAST_KEEPALIVED_SETTINGS:-/etc/default/hast-keepalived}
# shellcheck source=/dev/null
[ -r "$SETTINGS" ] && . "$SETTINGS"

say() {
    logger -t "hast-fence[$RES]" -p "daemon.$1" -- "$2" 2>/dev/null
    [ -z "$LOG_FILE" ] || echo "$(date '+%F %T.%N') hast-fence[$RES]: $2" >>"$LOG_FILE"
}

case "$VERB" in
unfence)
    say notice "unfence: nothing to undo"
    exit 0
    ;;
fence) ;;
*)
    say err "unknown verb '$VERB' (fence or unfence)"
    exit 2
    ;;
esac

if [ -z "$VIP" ] || [ -z "$TIEBREAKER" ]; then
    say err "fence: VIP and TIEBREAKER must be set in $SETTINGS"
    exit 2
fi
# (Not `ip ... | grep -q`: with pipefail, grep leaving early can fail the pipeline.)
addrs=$(ip -o addr show) || {
    say err "fence: ip addr show failed"
    exit 1
}
if [[ "$addrs" != *"inet ${VIP}/"* ]]; then
    say err "fence: this node does not hold $VIP: the other node is the master, not writing"
    exit 1
fi
for ((i = 0; i < TIEBREAKER_TRIES; i++)); do
    if ping -n -q -c 1 -W 1 "$TIEBREAKER" >/dev/null 2>&1; then
        say notice "fence: holding $VIP and reaching $TIEBREAKER: writing without the secondary"
        exit 0
    fi
done
say err "fence: $TIEBREAKER unreachable: this node is cut off, not writing"
exit 1
