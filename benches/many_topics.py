#!/usr/bin/env python3
"""Peak RSS and thread count of `kmirror run --once` over a `topic_regex` matching N topics
(issue 8 item 12: memory and threads bounded by configuration, not by the topic count).

For each N: one `kmirror dev-cluster` (2 clusters, 1 broker each) with N one-partition topics
seeded with RECORDS records each, then RUNS copies of all of them with a fresh checkpoint
directory and default limits. Peak RSS is the kernel's VmHWM of the kmirror process, the
thread count the most /proc/PID/status `Threads` seen (sampled every 20 ms). Prints a
Markdown table of medians.

  benches/many_topics.py [--topics 10 300] [--records 1000] [--runs 3] [--bin PATH ...]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dev_cluster(binary, topics, records):
    args = [str(binary), "dev-cluster", "--clusters", "2", "--brokers", "1",
            "--topic", f"t:{topics}:1"]
    for i in range(1, topics + 1):
        args += ["--seed", f"t{i}:{records}"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    boots = []
    for line in p.stdout:
        if line.startswith("cluster") and "bootstrap=" in line:
            boots.append(line.split("bootstrap=", 1)[1].strip())
        if line.startswith("ready"):
            return p, boots
    raise SystemExit(f"dev-cluster exited: {p.wait()}")


def status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
    except OSError:
        pass
    return fields


def one_run(binary, boots, workdir, n):
    cfg = Path(workdir) / f"mt-{n}.toml"
    cpdir = tempfile.mkdtemp(dir=workdir)
    cfg.write_text(f"""[checkpoints]
dir = "{cpdir}"
job = "many-topics"

[clusters.src]
bootstrap = "{boots[0]}"

[clusters.dst]
bootstrap = "{boots[1]}"

[[routes]]
name = "all"
source = "src"
topic_regex = "t[0-9]+"
target = "dst"
end = "snapshot"
""")
    started = time.monotonic()
    p = subprocess.Popen([str(binary), "run", "-c", str(cfg), "--once", "--progress", "0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threads = hwm = 0
    while p.poll() is None:
        st = status(p.pid)
        threads = max(threads, int(st.get("Threads", "0") or 0))
        if "VmHWM" in st:
            hwm = max(hwm, int(st["VmHWM"].split()[0]))
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    if p.returncode != 0:
        raise SystemExit(f"{binary} over {n} topics exited {p.returncode}")
    return hwm / 1024, threads, elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topics", type=int, nargs="+", default=[10, 300])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", nargs="+", default=[str(ROOT / "target" / "release" / "kmirror")],
                    help="kmirror binaries to measure (the first also hosts the dev-cluster)")
    a = ap.parse_args()
    host = Path(a.bin[0])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in a.topics:
            dc, boots = dev_cluster(host, n, a.records)
            try:
                for b in a.bin:
                    runs = [one_run(b, boots, work, n) for _ in range(a.runs)]
                    rss = statistics.median(r[0] for r in runs)
                    thr = statistics.median(r[1] for r in runs)
                    secs = statistics.median(r[2] for r in runs)
                    rows.append((b, n, rss, thr, secs, runs))
                    print(f"{b} topics={n}: rss {[round(r[0]) for r in runs]} MiB, "
                          f"threads {[r[1] for r in runs]}, {[round(r[2], 1) for r in runs]} s",
                          file=sys.stderr, flush=True)
            finally:
                dc.terminate()
                dc.wait()
    print("| binary | topics | records | peak RSS (MiB, median) | peak threads (median) | wall s (median) |")
    print("|---|---|---|---|---|---|")
    for b, n, rss, thr, secs, _ in rows:
        print(f"| {b} | {n} | {n * a.records} | {rss:.0f} | {thr:.0f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
