#!/usr/bin/env bash
# hast benchmarks, in one run (see bench/README.md):
#   1. fio through NBD: qemu-nbd vs hast (single node, fullsync, memsync, async pairs)
#   2. resync throughput of a memsync pair vs a raw copy of the same bytes
#   3. promotion time (role primary → first successful read through the new export)
#
# Usage: ./bench/run.sh            (~15 min on 2 cores)
#        QUICK=1 ./bench/run.sh    (~2-3 min: shorter jobs, smaller working set)
# Environment (defaults in brackets):
#   BENCH_DIR [/tmp/hast-bench]   results go to $BENCH_DIR/results (replaced each run);
#                                 images live in a work dir under it, removed on exit
#   RUNTIME [10, QUICK 3]  RAMP [1]  ROUNDS [3, QUICK 1]   seconds per fio job, warm-up,
#                                 rounds of the whole fio matrix (tables: median, min–max)
#   IMAGE_SIZE [1G]  WORKING_SET [512M, QUICK 256M]  RESYNC_MIB [1024, QUICK 256]
#   PROMOTIONS [5, QUICK 3]  PARTS [fio,resync,promotion]  NO_BUILD=1 (reuse target/release)  KEEP_WORK=1
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
command_line=$(echo "$0" "$@")
[[ -n ${QUICK:-} ]] && command_line="QUICK=$QUICK $command_line"

QUICK=${QUICK:-}
BENCH_DIR=${BENCH_DIR:-/tmp/hast-bench}
if [[ -n $QUICK ]]; then
    RUNTIME=${RUNTIME:-3}; WORKING_SET=${WORKING_SET:-256M}
    RESYNC_MIB=${RESYNC_MIB:-256}; PROMOTIONS=${PROMOTIONS:-3}; ROUNDS=${ROUNDS:-1}
else
    RUNTIME=${RUNTIME:-10}; WORKING_SET=${WORKING_SET:-512M}
    RESYNC_MIB=${RESYNC_MIB:-1024}; PROMOTIONS=${PROMOTIONS:-5}; ROUNDS=${ROUNDS:-3}
fi
RAMP=${RAMP:-1}
PARTS=${PARTS:-fio,resync,promotion}
IMAGE_SIZE=${IMAGE_SIZE:-1G}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------- tools

need_tools() {
    local missing=() t
    for t in fio qemu-nbd qemu-io nbdinfo python3; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing packages for: ${missing[*]}"
        apt-get update -qq
        # python3-libnbd lets helpers.py time promotions without a process per attempt.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            fio qemu-utils libnbd-bin python3 python3-libnbd >/dev/null
    else
        die "missing ${missing[*]}; run as root on Debian (this script then runs
   apt-get install fio qemu-utils libnbd-bin python3-libnbd), or install them yourself"
    fi
}

# The Python with libnbd bindings if there is one (Debian's python3-libnbd lives in the
# system interpreter, which may not be the first python3 on PATH), else any python3.
pick_python() {
    local p
    for p in /usr/bin/python3 "$(command -v python3)"; do
        if [[ -x $p ]] && "$p" -c 'import nbd' 2>/dev/null; then echo "$p"; return; fi
    done
    command -v python3
}

# --------------------------------------------------------------------------- cleanup

declare -a BG_PIDS=()   # every background process this script started
WORK=

cleanup() {
    local rc=$? pid deadline
    trap - EXIT INT TERM
    # SIGTERM first: hastd and qemu-nbd shut down cleanly on it.
    for pid in "${BG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 15))
    for pid in "${BG_PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        # Stragglers get SIGKILL: a benchmark must never leave daemons behind.
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM, killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK && -z ${KEEP_WORK:-} ]]; then
        rm -rf "$WORK"
    elif [[ -n $WORK ]]; then
        log "work dir kept: $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------- hast

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# write_conf DIR MODE: a two-node config (nodes a and b, one resource r0) on loopback;
# MODE "single" gives node a alone with `remote none` (the primary runs degraded).
write_conf() {
    local d=$1 mode=$2 pa pb
    pa=$(free_port); pb=$(free_port)
    if [[ $mode == single ]]; then
        cat >"$d/hast.conf" <<EOF
on a { control uds://$d/a.ctl listen tcp://127.0.0.1:$pa }
resource r0 {
        on a { local $d/a.img remote none export $d/a.sock }
}
EOF
    else
        cat >"$d/hast.conf" <<EOF
replication $mode
on a { control uds://$d/a.ctl listen tcp://127.0.0.1:$pa }
on b { control uds://$d/b.ctl listen tcp://127.0.0.1:$pb }
resource r0 {
        on a { local $d/a.img remote tcp://127.0.0.1:$pb export $d/a.sock }
        on b { local $d/b.img remote tcp://127.0.0.1:$pa export $d/b.sock }
}
EOF
    fi
}

ctl() { local d=$1 node=$2; shift 2; "$HASTCTL" -c "$d/hast.conf" --node "$node" "$@"; }

status_field() { "$PY" "$here/helpers.py" status "$HASTCTL" "$1/hast.conf" "$2" "$3"; }

declare -A DAEMON_PID=()   # "DIR node" -> pid

# start_hastd DIR NODE: hastd in the foreground (so $! is the daemon), logging to a file;
# returns once its control socket answers.
start_hastd() {
    local d=$1 node=$2 pid deadline
    "$HASTD" -F -c "$d/hast.conf" --node "$node" -P "$d/$node.pid" >>"$d/hastd-$node.log" 2>&1 &
    pid=$!
    BG_PIDS+=("$pid")
    DAEMON_PID["$d $node"]=$pid
    deadline=$((SECONDS + 20))
    until ctl "$d" "$node" status >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { cat "$d/hastd-$node.log" >&2; die "hastd $node exited"; }
        ((SECONDS < deadline)) || die "hastd $node did not answer within 20 s"
        sleep 0.05
    done
}

wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 deadline; shift 2
    deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.05
    done
}

pair_complete() {
    [[ $(status_field "$1" a status) == complete && $(status_field "$1" a dirty) == 0 ]]
}

status_is() { [[ $(status_field "$1" "$2" "$3") == "$4" ]]; }

export_up() { nbdinfo --size "$1" >/dev/null 2>&1; }

uri_of() { echo "nbd+unix:///r0?socket=$1"; }

# hast_up NAME MODE [SIZE]: a fresh resource in $WORK/NAME, a primary, b secondary,
# connected.
hast_up() {
    local name=$1 mode=$2 d=$WORK/$1 node size=${3:-$IMAGE_SIZE}
    mkdir -p "$d"
    write_conf "$d" "$mode"
    local nodes=(a b)
    [[ $mode == single ]] && nodes=(a)
    for node in "${nodes[@]}"; do
        truncate -s "$size" "$d/$node.img"
        ctl "$d" "$node" create r0 >/dev/null
        start_hastd "$d" "$node"
    done
    if [[ $mode != single ]]; then
        ctl "$d" b role secondary r0 >/dev/null
    fi
    ctl "$d" a role primary r0 >/dev/null
    wait_until 20 "$name export" export_up "$(uri_of "$d/a.sock")"
    if [[ $mode != single ]]; then
        wait_until 30 "$name to connect" pair_complete "$d"
    fi
}

# --------------------------------------------------------------------------- fio

# name|description|fio options. The order matters little: every target gets a prefill.
WORKLOADS=(
    "seqwrite-1M|1 MiB sequential writes, iodepth 8|--rw=write --bs=1M --iodepth=8"
    "randwrite-4k|4 KiB random writes, iodepth 32|--rw=randwrite --bs=4k --iodepth=32"
    "randread-4k|4 KiB random reads, iodepth 32|--rw=randread --bs=4k --iodepth=32"
    "randrw-4k|4 KiB random 70% reads / 30% writes, iodepth 32|--rw=randrw --rwmixread=70 --bs=4k --iodepth=32"
    "randwrite-4k-flush|4 KiB random writes, iodepth 32, NBD FLUSH after every 32 writes|--rw=randwrite --bs=4k --iodepth=32 --fsync=32"
)
TARGETS=(qemu-nbd hast-single hast-fullsync hast-memsync hast-async)
declare -A URI=() SERVER_PIDS=()

fio_common() {
    echo --ioengine=nbd --uri="$1" --size="$WORKING_SET" --randrepeat=0 --norandommap
}

# run_fio WORKLOAD_SPEC TARGET ROUND: one measured fio job, plus server CPU use.
run_fio() {
    local spec=$1 target=$2 round=$3 name opts out t0 t1 c0 c1 clk
    name=${spec%%|*}; opts=${spec##*|}
    out=$RESULTS/fio/$name.$target.$round
    clk=$(getconf CLK_TCK)
    # Start every job with no dirty page cache: otherwise a job pays for the writeback
    # of what the previous target wrote (GBs after a seqwrite run). Not timed.
    sync
    # shellcheck disable=SC2086 # option lists are meant to split
    c0=$("$PY" "$here/helpers.py" cputicks ${SERVER_PIDS[$target]})
    t0=$(date +%s%N)
    # shellcheck disable=SC2046,SC2086
    fio --name="$name" $(fio_common "${URI[$target]}") $opts \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        --output-format=json --output="$out.json" >"$out.log" 2>&1 ||
        { cat "$out.log" >&2; die "fio $name on $target failed"; }
    t1=$(date +%s%N)
    # shellcheck disable=SC2086
    c1=$("$PY" "$here/helpers.py" cputicks ${SERVER_PIDS[$target]})
    # CPU% of the serving processes over the whole fio run (100 = one core).
    echo $(( (c1 - c0) * 100 * 1000000000 / clk / (t1 - t0) )) >"$out.cpu"
    log "  $target: $("$PY" "$here/helpers.py" fio-metrics "$out.json"), server CPU $(cat "$out.cpu")%"
}

prefill() { # write the whole working set once so reads hit data, not holes
    # shellcheck disable=SC2046
    fio --name=prefill $(fio_common "$1") --rw=write --bs=1M --iodepth=8 \
        --end_fsync=1 --output=/dev/null >/dev/null 2>&1 || die "prefill of $1 failed"
}

bench_fio() {
    local d t spec round size
    log "starting targets"
    for t in hast-single hast-fullsync hast-memsync hast-async; do
        hast_up "$t" "${t#hast-}"
        d=$WORK/$t
        URI[$t]=$(uri_of "$d/a.sock")
        SERVER_PIDS[$t]="${DAEMON_PID["$d a"]} ${DAEMON_PID["$d b"]:-}"
    done
    # qemu-nbd serves a raw file exactly as large as hast's data area (the image minus
    # hast's metadata). Options chosen to match hast's I/O path, see README.md.
    size=$(status_field "$WORK/hast-single" a datasize)
    d=$WORK/qemu-nbd; mkdir -p "$d"
    truncate -s "$size" "$d/q.img"
    qemu-nbd -f raw -k "$d/q.sock" -x r0 --cache=writeback --aio=threads \
        --discard=unmap -t -e 4 "$d/q.img" >"$d/qemu-nbd.log" 2>&1 &
    BG_PIDS+=("$!"); SERVER_PIDS[qemu-nbd]=$!
    URI[qemu-nbd]=$(uri_of "$d/q.sock")
    wait_until 20 "qemu-nbd export" export_up "${URI[qemu-nbd]}"

    log "prefilling $WORKING_SET on every target"
    for t in "${TARGETS[@]}"; do prefill "${URI[$t]}"; done
    for t in hast-fullsync hast-memsync hast-async; do
        wait_until 60 "$t to settle" pair_complete "$WORK/$t"
    done

    # Workload-major order: all targets run each workload back to back, so a burst of
    # load from other users of the machine skews one workload, not one target. The
    # starting target rotates from one workload to the next so that no target always
    # runs last, behind the writeback of everything the others wrote.
    local n=${#TARGETS[@]} i=0 k
    for ((round = 1; round <= ROUNDS; round++)); do
        for spec in "${WORKLOADS[@]}"; do
            log "fio ${spec%%|*} (round $round/$ROUNDS, ${RUNTIME}s per target)"
            for ((k = 0; k < n; k++)); do
                run_fio "$spec" "${TARGETS[(i + k) % n]}" "$round"
            done
            i=$((i + 1))
        done
    done
    for t in hast-single hast-fullsync hast-memsync hast-async; do
        ctl "$WORK/$t" a status --json r0 >"$RESULTS/status-$t.json" || true
    done
    # Free the page cache and disk space of the fio targets before resync timings.
    for t in "${TARGETS[@]}"; do
        for node in a b; do
            local pid=${DAEMON_PID["$WORK/$t $node"]:-}
            [[ -n $pid ]] && { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }
        done
    done
    kill -TERM "${SERVER_PIDS[qemu-nbd]}"; wait "${SERVER_PIDS[qemu-nbd]}" 2>/dev/null || true
    for t in "${TARGETS[@]}"; do rm -f "$WORK/$t"/*.img; done
}

# --------------------------------------------------------------------------- resync

bench_resync() {
    local d=$WORK/resync bpid dirty offset bytes t0 t1
    log "resync: memsync pair, SIGKILL the secondary, write $RESYNC_MIB MiB, restart it"
    # Big enough to hold the rewritten region plus hast's metadata.
    hast_up resync memsync "$((RESYNC_MIB + 64))M"
    d=$WORK/resync
    bpid=${DAEMON_PID["$d b"]}
    kill -KILL "$bpid"; wait "$bpid" 2>/dev/null || true
    wait_until 30 "primary to notice" status_is "$d" a status degraded
    fio --name=resync-fill --ioengine=nbd --uri="$(uri_of "$d/a.sock")" --rw=write --bs=1M \
        --iodepth=8 --size="${RESYNC_MIB}M" --end_fsync=1 --output=/dev/null >/dev/null 2>&1 ||
        die "writing to the degraded primary failed"
    dirty=$(status_field "$d" a dirty)
    log "  primary degraded, $dirty bytes dirty; restarting the secondary"
    start_hastd "$d" b
    ctl "$d" b role secondary r0 >/dev/null
    "$PY" "$here/helpers.py" resync-wait "$RESULTS/resync.json" "$HASTCTL" "$d/hast.conf" a \
        "$d/hastd-a.log"

    # The same bytes copied by dd from the primary's image into a fresh sparse file
    # (as the secondary's image was): once through the page cache only, as hast's sync
    # writes are plain pwrites, and once with fdatasync at the end.
    offset=$(ctl "$d" a dump --json r0 2>/dev/null | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["offset"])') || offset=0
    bytes=$((RESYNC_MIB * 1048576))
    truncate -s "$((RESYNC_MIB + 64))M" "$WORK/raw1.img" "$WORK/raw2.img"
    t0=$(date +%s%N)
    dd if="$d/a.img" of="$WORK/raw1.img" bs=1M count="$bytes" skip="$offset" seek="$offset" \
        iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none
    t1=$(date +%s%N)
    local raw=$(( t1 - t0 ))
    t0=$(date +%s%N)
    dd if="$d/a.img" of="$WORK/raw2.img" bs=1M count="$bytes" skip="$offset" seek="$offset" \
        iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc,fdatasync status=none
    t1=$(date +%s%N)
    local rawsync=$(( t1 - t0 ))
    "$PY" - "$RESULTS/resync.json" "$raw" "$rawsync" <<'EOF'
import json, sys
path, raw, rawsync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(path))
r.update(raw_copy_s=raw / 1e9, raw_copy_fsync_s=rawsync / 1e9)
json.dump(r, open(path, "w"), indent=1)
EOF
    rm -f "$WORK/raw1.img" "$WORK/raw2.img"
    log "  done: $("$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("sync %.2fs, wall %.2fs, dd %.2fs" % (r["sync_s"], r["wall_s"], r["raw_copy_s"]))' "$RESULTS/resync.json")"
}

# --------------------------------------------------------------------------- promotion

bench_promotion() {
    local d=$WORK/resync
    log "promotion: $PROMOTIONS role swaps on the memsync pair"
    [[ -d $d ]] || hast_up resync memsync "$((RESYNC_MIB + 64))M"
    wait_until 30 "pair to be complete" pair_complete "$d"
    cp "$d/hast.conf" "$RESULTS/hast-memsync-pair.conf"
    "$PY" "$here/helpers.py" promote "$RESULTS/promotion.json" "$HASTCTL" "$d/hast.conf" \
        "$PROMOTIONS" "$(uri_of "$d/a.sock")" "$(uri_of "$d/b.sock")"
}

# --------------------------------------------------------------------------- main

write_meta() {
    local workloads=() spec
    for spec in "${WORKLOADS[@]}"; do workloads+=("${spec%%|*}|$(cut -d'|' -f2 <<<"$spec")"); done
    "$PY" - "$RESULTS/meta.json" "${workloads[@]}" <<EOF
import json, os, subprocess, sys
def out(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except Exception:
        return "?"
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
mem = int(open("/proc/meminfo").readline().split()[1]) / 2**20
json.dump({
    "date": out("date", "-u", "+%Y-%m-%d %H:%M UTC"),
    "command": """$command_line""",
    "cpus": os.cpu_count(), "cpu_model": cpu[0] if cpu else "?", "mem_gib": round(mem),
    "kernel": os.uname().release,
    "fstype": out("stat", "-f", "-c", "%T", "$WORK"),
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "hast_commit": out("git", "-C", "$repo", "rev-parse", "--short", "HEAD"),
    "qemu": out("qemu-nbd", "--version"), "fio": out("fio", "--version"),
    "image": "$IMAGE_SIZE", "working_set": "$WORKING_SET", "runtime": $RUNTIME, "ramp": $RAMP,
    "rounds": $ROUNDS,
    "targets": "${TARGETS[*]}".split(),
    "workloads": [w.split("|", 1) for w in sys.argv[2:]],
}, open(sys.argv[1], "w"), indent=1)
EOF
}

main() {
    need_tools
    PY=$(pick_python)
    if [[ -z ${NO_BUILD:-} ]]; then
        command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
        log "building release binaries"
        (cd "$repo" && cargo build --release --quiet --bin hastd --bin hastctl)
    fi
    HASTD=$repo/target/release/hastd
    HASTCTL=$repo/target/release/hastctl
    [[ -x $HASTD && -x $HASTCTL ]] || die "no release binaries in $repo/target/release"

    mkdir -p "$BENCH_DIR"
    RESULTS=$BENCH_DIR/results
    rm -rf "$RESULTS"
    mkdir -p "$RESULTS/fio"
    WORK=$(mktemp -d "$BENCH_DIR/work.XXXXXX")
    write_meta
    log "results in $RESULTS, work dir $WORK"

    [[ ,$PARTS, == *,fio,* ]] && bench_fio
    [[ ,$PARTS, == *,resync,* ]] && bench_resync
    [[ ,$PARTS, == *,promotion,* ]] && bench_promotion

    "$PY" "$here/helpers.py" summarize "$RESULTS" >/dev/null
    # Daemon logs are small and explain odd figures.
    for f in "$WORK"/*/hastd-*.log; do
        [[ -e $f ]] && cp "$f" "$RESULTS/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    echo
    cat "$RESULTS/summary.md"
}

main "$@"
