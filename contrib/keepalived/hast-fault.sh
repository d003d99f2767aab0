#!/usr/bin/env bash
# hast-fault.sh RESOURCE — keepalived notify_fault: this node lost its network (or a
# tracked script failed). The other node will take over, so stop serving here exactly
# as on BACKUP (docs/failover-keepalived.md).
export HAST_FAILOVER_TAG=hast-fault
exec "$(dirname "$0")/hast-backup.sh" "$@"
