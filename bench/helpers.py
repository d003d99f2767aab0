#!/usr/bin/env python3
"""Helpers for bench/run.sh: the parts that are awkward in bash (JSON, timing loops,
medians). Standard library only, except `promote`, which uses libnbd's Python binding
(python3-libnbd) when it is importable and falls back to spawning qemu-io otherwise.

Subcommands:
  cputicks PID...                 utime+stime (clock ticks) summed over PIDs
  status CTL_ARGS... -- FIELD     one field of `hastctl status --json r0`
  resync-wait RESULT_JSON HASTCTL CONF NODE  poll until dirty == 0, write timings
  promote RESULT_JSON HASTCTL CONF N URI_A URI_B  time role swaps
  summarize RESULTS_DIR           write RESULTS_DIR/summary.md from everything measured
"""

import json
import os
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def load_fio(path):
    """fio's JSON; the nbd engine prints 'fio: connected to NBD server' to the same
    stream on some versions, so parse from the first brace."""
    text = open(path, encoding="utf-8", errors="replace").read()
    return json.loads(text[text.index("{"):])


def cputicks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The command name may contain spaces: split after the closing paren.
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total


def hast_status(hastctl, conf, node):
    out = subprocess.run(
        [hastctl, "-c", conf, "--node", node, "status", "--json", "r0"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    return json.loads(out)[0]


def log_sync_seconds(logfile):
    """Duration of the last sync from the primary's log: timestamps (µs) of its
    'synchronization started' and 'synchronization complete' lines."""
    from datetime import datetime
    start = end = None
    for line in open(logfile, errors="replace"):
        if "synchronization started" in line:
            start, end = line.split()[0], None
        elif "synchronization complete" in line and start:
            end = line.split()[0]
    if not (start and end):
        return None
    ts = [datetime.fromisoformat(t.rstrip("Z")) for t in (start, end)]
    return (ts[1] - ts[0]).total_seconds()


def resync_wait(result, hastctl, conf, node, logfile):
    """Called right after `role secondary` on the restarted node. Polls the primary every
    0.05 s. The sync phase starts at the first poll that shows a sync running or fewer
    dirty bytes than at the start; before that the primary is still in its reconnect
    backoff (1 s doubling to 10 s), which is not copy throughput. The primary's log gives
    the sync phase more precisely."""
    t0 = time.monotonic()
    first = hast_status(hastctl, conf, node)
    dirty0 = first["dirty"]
    sync_seen = None
    samples = []
    while True:
        now = time.monotonic()
        st = hast_status(hastctl, conf, node)
        samples.append((round(now - t0, 3), st["status"], st["dirty"], st["sync"]))
        if sync_seen is None and (st["sync"] is not None or st["dirty"] < dirty0):
            sync_seen = now
        if st["dirty"] == 0 and st["status"] == "complete":
            end = now
            break
        if now - t0 > 300:
            sys.exit("resync did not finish within 300 s")
        time.sleep(0.05)
    json.dump(
        {
            "log_sync_s": log_sync_seconds(logfile),
            "dirty_bytes": dirty0,
            "wall_s": end - t0,
            "reconnect_wait_s": (sync_seen or end) - t0,
            "sync_s": end - (sync_seen or t0),
            "samples": samples,
        },
        open(result, "w"),
        indent=1,
    )


def _reader():
    """Returns read_once(uri) -> bool: one fresh connection and a 4 KiB read."""
    try:
        import nbd  # python3-libnbd

        def read_once(uri):
            h = nbd.NBD()  # freed (and its socket closed) when unreferenced
            try:
                h.connect_uri(uri)
                h.pread(4096, 0)
                h.shutdown()
                return True
            except nbd.Error:
                return False

        return "libnbd", read_once
    except ImportError:

        def read_once(uri):
            p = subprocess.run(
                ["qemu-io", "-f", "raw", "-c", "read 0 4k", uri],
                capture_output=True, text=True,
            )
            return p.returncode == 0 and "read 4096/4096" in p.stdout

        return "qemu-io", read_once


def promote(result, hastctl, conf, n, uri_a, uri_b):
    """n role swaps between nodes a and b. Each: demote the current primary (timed
    separately), then time `role primary` on the other node until the first successful
    4 KiB read through its export, then wait for the pair to be complete again."""
    how, read_once = _reader()
    uris = {"a": uri_a, "b": uri_b}

    def ctl(node, *args):
        subprocess.run([hastctl, "-c", conf, "--node", node, *args],
                       check=True, capture_output=True, timeout=60)

    # Floor: the same check against an export that is already up (client cost only).
    floor = []
    for _ in range(5):
        t = time.monotonic()
        assert read_once(uri_a), "the primary's export does not answer"
        floor.append((time.monotonic() - t) * 1000)

    runs = []
    cur, other = "a", "b"
    for _ in range(int(n)):
        t = time.monotonic()
        ctl(cur, "role", "secondary", "r0")
        demote = time.monotonic() - t
        t0 = time.monotonic()
        ctl(other, "role", "primary", "r0")
        t1 = time.monotonic()
        attempts = 1
        while not read_once(uris[other]):
            attempts += 1
            if time.monotonic() - t0 > 60:
                sys.exit("no read through the new primary within 60 s")
            time.sleep(0.002)
        t2 = time.monotonic()
        # Back to a connected pair before the next swap.
        deadline = time.monotonic() + 60
        while True:
            s = hast_status(hastctl, conf, other)
            if s["status"] == "complete" and s["dirty"] == 0:
                break
            if time.monotonic() > deadline:
                sys.exit("pair did not reconnect after a promotion")
            time.sleep(0.05)
        reconnect = time.monotonic() - t2
        runs.append({
            "new_primary": other,
            "demote_ms": demote * 1000,
            "role_cmd_ms": (t1 - t0) * 1000,
            "first_read_ms": (t2 - t0) * 1000,
            "read_attempts": attempts,
            "then_complete_after_ms": reconnect * 1000,
        })
        cur, other = other, cur
    json.dump({"client": how, "client_floor_ms": statistics.median(floor), "runs": runs},
              open(result, "w"), indent=1)


# ---------------------------------------------------------------------------- summary

def fio_metrics(j):
    job = j["jobs"][0]
    r, w = job["read"], job["write"]
    iops = r["iops"] + w["iops"]
    mibs = (r["bw_bytes"] + w["bw_bytes"]) / 2**20
    p99 = max(
        (d["clat_ns"].get("percentile", {}).get("99.000000", 0) for d in (r, w) if d["total_ios"]),
        default=0,
    )
    return iops, mibs, p99 / 1000.0, job["error"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(results):
    meta = json.load(open(os.path.join(results, "meta.json")))
    targets = meta["targets"]
    workloads = meta["workloads"]  # [[name, description], ...]
    fio_dir = os.path.join(results, "fio")
    if not os.listdir(fio_dir):
        targets, workloads = [], []
    # (workload, target) -> lists over rounds
    data = {}
    for name in sorted(os.listdir(fio_dir)):
        if not name.endswith(".json"):
            continue
        wl, tgt, _round = name[:-5].split(".")
        try:
            iops, mibs, p99, err = fio_metrics(load_fio(os.path.join(fio_dir, name)))
        except (ValueError, KeyError, IndexError) as e:
            print(f"warning: cannot read {name}: {e}", file=sys.stderr)
            continue
        d = data.setdefault((wl, tgt), {"iops": [], "mibs": [], "p99": [], "cpu": [], "err": 0,
                                        "by_round": {}})
        d["by_round"][_round] = iops
        d["iops"].append(iops)
        d["mibs"].append(mibs)
        d["p99"].append(p99)
        d["err"] += err
        cpu_file = os.path.join(fio_dir, name[:-5] + ".cpu")
        if os.path.exists(cpu_file):
            d["cpu"].append(float(open(cpu_file).read().split()[0]))

    out = []
    p = out.append
    p(f"# hast benchmark ({meta['date']})\n")
    p(f"- machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['mem_gib']} GiB RAM, "
      f"kernel {meta['kernel']}, fs of the work dir: {meta['fstype']}")
    p(f"- command: `{meta['command']}`; hast {meta['hast_commit']}; {meta['qemu']}; {meta['fio']}")
    p(f"- image {meta['image']}, fio working set {meta['working_set']}, "
      f"{meta['runtime']} s per job (+{meta['ramp']} s ramp), {meta['rounds']} round(s), medians; "
      f"load average at start: {meta['loadavg']}")
    p("- ratio = hast / qemu-nbd for the same workload (IOPS; > 1 is faster). "
      "server CPU = CPU time of the serving processes (hastd primary + secondary, or qemu-nbd) "
      "/ wall time, 100% = one core.\n")

    if targets:
        fio_section(p, data, targets, workloads)
    resync_promotion_sections(p, results)
    text = "\n".join(out)
    open(os.path.join(results, "summary.md"), "w").write(text + "\n")
    print(text)


def round_ratios(data, wl, t):
    """Per-round ratios of target t to qemu-nbd in the same round (same workload)."""
    if t == "qemu-nbd":
        return [1.0]
    mine = data.get((wl, t), {}).get("by_round", {})
    base = data.get((wl, "qemu-nbd"), {}).get("by_round", {})
    return [mine[r] / base[r] for r in sorted(mine) if base.get(r)]


def spread(xs, fmt):
    """`median` alone for one value, else `median (min–max)`: the spread of the rounds."""
    if not xs:
        return "–"
    m = fmt.format(med(xs))
    return m if len(xs) == 1 else f"{m} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def fio_section(p, data, targets, workloads):
    p("## fio through NBD\n")
    header = "| workload | " + " | ".join(targets) + " |"
    p("Ratio to qemu-nbd (IOPS; each round's ratio is taken against qemu-nbd in the same "
      "round; median, and min–max over the rounds when there are several):\n")
    p(header)
    p("|---" * (len(targets) + 1) + "|")
    for wl, _desc in workloads:
        cells = [spread(round_ratios(data, wl, t), "{:.2f}") for t in targets]
        p(f"| {wl} | " + " | ".join(cells) + " |")
    p("")
    p("Details:\n")
    p("| workload | target | IOPS | MiB/s | clat p99 (µs) | ratio | server CPU |")
    p("|---|---|---:|---:|---:|---:|---:|")
    for wl, desc in workloads:
        for t in targets:
            d = data.get((wl, t))
            if not d:
                p(f"| {wl} | {t} | – | – | – | – | – |")
                continue
            mibs, p99 = med(d["mibs"]), med(d["p99"])
            iops = spread(d["iops"], "{:,.0f}")
            ratio = spread(round_ratios(data, wl, t), "{:.2f}")
            cpu = f"{med(d['cpu']):.0f}%" if d["cpu"] else "–"
            err = " (fio error)" if d["err"] else ""
            p(f"| {wl} | {t} | {iops} | {mibs:,.1f} | {p99:,.0f} | {ratio} | {cpu}{err} |")
    p("")
    p("Workloads: " + "; ".join(f"`{w}` = {d}" for w, d in workloads) + ".\n")


def resync_promotion_sections(p, results):
    rs = os.path.join(results, "resync.json")
    if os.path.exists(rs):
        r = json.load(open(rs))
        mib = r["dirty_bytes"] / 2**20
        sync_rate = mib / r["sync_s"] if r["sync_s"] > 0 else float("nan")
        p("## Resync (memsync pair, secondary SIGKILLed, writes to the degraded primary)\n")
        p("| what | MiB | time (s) | MiB/s | ratio to raw copy |")
        p("|---|---:|---:|---:|---:|")
        raw = r.get("raw_copy_s")
        raw_rate = mib / raw if raw else float("nan")
        p(f"| hast sync phase (first progress → dirty 0, polled every 0.05 s) | {mib:.0f} | "
          f"{r['sync_s']:.2f} | {sync_rate:.0f} | {sync_rate / raw_rate:.2f} |")
        if r.get("log_sync_s"):
            lr = mib / r["log_sync_s"]
            p(f"| hast sync phase from hastd's log timestamps (started → complete) | {mib:.0f} | {r['log_sync_s']:.2f} | {lr:.0f} | "
              f"{lr / raw_rate:.2f} |")
        p(f"| hast wall: `role secondary` → dirty 0 (includes reconnect backoff "
          f"{r['reconnect_wait_s']:.1f} s) | {mib:.0f} | {r['wall_s']:.2f} | "
          f"{mib / r['wall_s']:.0f} | {mib / r['wall_s'] / raw_rate:.2f} |")
        if raw:
            p(f"| raw copy: dd bs=1M a.img → fresh file, page cache | {mib:.0f} | {raw:.2f} | "
              f"{raw_rate:.0f} | 1.00 |")
        if r.get("raw_copy_fsync_s"):
            f = r["raw_copy_fsync_s"]
            p(f"| raw copy: same + conv=fdatasync | {mib:.0f} | {f:.2f} | {mib / f:.0f} | "
              f"{mib / f / raw_rate:.2f} |")
        p("")

    pr = os.path.join(results, "promotion.json")
    if os.path.exists(pr):
        r = json.load(open(pr))
        runs = r["runs"]
        p("## Promotion (memsync pair; old primary demoted first, not counted)\n")
        p(f"{len(runs)} swaps, client `{r['client']}` (one connect + 4 KiB read per attempt; "
          f"that check alone takes {r['client_floor_ms']:.1f} ms on a live export).\n")
        p("| | median (ms) | min | max |")
        p("|---|---:|---:|---:|")
        for key, label in [
            ("first_read_ms", "`role primary` start → first successful read"),
            ("role_cmd_ms", "`hastctl role primary` alone"),
            ("demote_ms", "`hastctl role secondary` on the old primary"),
            ("then_complete_after_ms", "first read → pair `complete` again"),
        ]:
            xs = [x[key] for x in runs]
            p(f"| {label} | {med(xs):.0f} | {min(xs):.0f} | {max(xs):.0f} |")
        p("")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "cputicks":
        print(cputicks(args))
    elif cmd == "status":
        hastctl, conf, node, field = args
        print(json.dumps(hast_status(hastctl, conf, node)[field]).strip('"'))
    elif cmd == "resync-wait":
        resync_wait(*args)
    elif cmd == "promote":
        promote(*args)
    elif cmd == "summarize":
        summarize(*args)
    elif cmd == "fio-metrics":
        iops, mibs, p99, err = fio_metrics(load_fio(args[0]))
        print(f"{iops:.0f} IOPS {mibs:.1f} MiB/s p99 {p99:.0f} us err {err}")
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
