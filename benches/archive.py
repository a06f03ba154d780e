#!/usr/bin/env python3
"""Dump and restore throughput (issue 14) beside kcat on the same data, and the archive's size
beside the raw bytes. Mock clusters hosted by `kmirror dev-cluster` (see benches/e2e.py, whose
helpers this uses); build the release binary first (`cargo build --release`).

Per workload one source cluster is seeded once; then, alternated, each run:

  kmirror dump      kmirror run -c dump.toml --once --progress 0     (source -> archive dir)
  kcat -C > file    kcat -C -b SRC -t bench -e -o beginning -q -K: > file
  kmirror restore   kmirror run -c restore.toml --progress 0         (archive -> fresh cluster)
  kcat -P -l file   kcat -P -b DST -t bench -K: -l file              (file -> fresh cluster)

Every run is checked: the archive holds every record (its manifests' counts), the target
every record (watermarks). Usage: benches/archive.py [--runs 3]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402

# name, value bytes, partitions, records per partition (the mock keeps <= 5 MB a partition).
# Values are JSON whose "blob" is hex of random bytes: about half of a value's bytes are
# incompressible, so the archive's ratio is not flattered by padding.
WORKLOADS = [("200B/64p", 200, 64, 15000), ("4KiB/64p", 4096, 64, 960)]


def seed_random(bootstrap, topic, partitions, count, size):
    import os
    from confluent_kafka import Producer

    t = time.perf_counter()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 100, "batch.size": 1000000,
                  "batch.num.messages": 100000, "queue.buffering.max.messages": 1000000,
                  "queue.buffering.max.kbytes": 2097151})
    n = 0
    for part in range(partitions):
        for _ in range(count):
            head = '{"order_id":%d,"tenant_id":"t-%02d","blob":"' % (n, n % 10)
            blob = os.urandom((size - len(head) - 2) // 2 + 1).hex()[: size - len(head) - 2]
            v = (head + blob + '"}').encode()
            while True:
                try:
                    p.produce(topic, v, b"customer-%d" % (n % 997), partition=part,
                              headers=[("trace-id", b"trace-%d" % n)])
                    break
                except BufferError:
                    p.poll(0.01)
            n += 1
            if n % 5000 == 0:
                p.poll(0)
    if p.flush(120):
        raise SystemExit("seed: not every record was acknowledged")
    e2e.log(f"  seeded {topic}: {partitions} x {count} records of {size} B in {time.perf_counter() - t:.1f}s")


def run_timed(cmd, tmp, name, stdout=None):
    t = time.perf_counter()
    p, out = e2e.timed(cmd, tmp, name, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if p.wait() != 0:
        raise SystemExit(f"{name}: {' '.join(cmd)} failed ({p.returncode})")
    wall = time.perf_counter() - t
    return {"wall": wall, **e2e.read_time(out)}


def archive_stats(root):
    records = raw = compressed = 0
    for m in Path(root).glob("*/*/*.json"):
        j = json.loads(m.read_text())
        records += j["records"]
        raw += j["uncompressed_bytes"]
        compressed += j["compressed_bytes"]
    return records, raw, compressed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", help="run only this workload (e.g. 200B/64p)")
    a = ap.parse_args()
    results = {"machine": e2e.machine(), "workloads": {}}
    for name, size, parts, per in WORKLOADS:
        if a.only and a.only != name:
            continue
        total = parts * per
        src = e2e.DevCluster([("bench", parts)])
        seed_random(src.bootstrap, "bench", parts, per, size)
        runs = {"kmirror dump": [], "kcat -C > file": [], "kmirror restore": [], "kcat -P -l file": []}
        sizes = {}
        for i in range(a.runs):
            tmp = Path(tempfile.mkdtemp(prefix="kmirror-archive-bench-"))
            vault = tmp / "vault"
            dump = tmp / "dump.toml"
            dump.write_text(
                f'[checkpoints]\ndir = "{tmp}/cp"\njob = "dump"\n'
                f'[clusters.src]\nbootstrap = "{src.bootstrap}"\n'
                f'[clusters.vault]\narchive = "{vault}"\n'
                '[[routes]]\nname = "d"\nsource = "src"\ntopics = ["bench"]\ntarget = "vault"\n')
            r = run_timed([str(e2e.KMIRROR), "run", "-c", str(dump), "--once", "--progress", "0"], tmp, "dump")
            n, raw, comp = archive_stats(vault)
            assert n == total, f"archive holds {n} of {total}"
            sizes = {"records": n, "encoded_bytes": raw, "archive_bytes": comp,
                     "archive_dir_bytes": sum(f.stat().st_size for f in vault.rglob("*") if f.is_file())}
            runs["kmirror dump"].append(r)

            file = tmp / "bench.kcat"
            with open(file, "wb") as f:
                r = run_timed(["kcat", "-C", "-b", src.bootstrap, "-t", "bench", "-e", "-o", "beginning",
                               "-q", "-K:"], tmp, "kcat-c", stdout=f)
            sizes["kcat_file_bytes"] = file.stat().st_size
            runs["kcat -C > file"].append(r)

            dst = e2e.DevCluster([("bench", parts)])
            restore = tmp / "restore.toml"
            restore.write_text(
                f'[checkpoints]\ndir = "{tmp}/cp"\njob = "restore"\n'
                f'[clusters.vault]\narchive = "{vault}"\n'
                f'[clusters.dst]\nbootstrap = "{dst.bootstrap}"\n'
                '[[routes]]\nname = "r"\nsource = "vault"\ntopics = ["bench"]\ntarget = "dst"\n')
            r = run_timed([str(e2e.KMIRROR), "run", "-c", str(restore), "--progress", "0"], tmp, "restore")
            present, deleted = e2e.target_counts(dst.bootstrap, "bench", parts)
            assert (present, deleted) == (total, 0), f"restore: {present} present, {deleted} deleted"
            runs["kmirror restore"].append(r)
            dst.stop()

            dst = e2e.DevCluster([("bench", parts)])
            r = run_timed(["kcat", "-P", "-b", dst.bootstrap, "-t", "bench", "-K:", "-l", str(file)], tmp, "kcat-p")
            present, deleted = e2e.target_counts(dst.bootstrap, "bench", parts)
            assert (present, deleted) == (total, 0), f"kcat -P: {present} present, {deleted} deleted"
            runs["kcat -P -l file"].append(r)
            dst.stop()
            shutil.rmtree(tmp)
            e2e.log(f"{name} run {i + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f}s" for k, v in runs.items()))
        src.stop()
        summary = {}
        for k, v in runs.items():
            wall = statistics.median(x["wall"] for x in v)
            summary[k] = {"wall_median": wall, "walls": [x["wall"] for x in v],
                          "records_per_s": total / wall if wall else None,
                          "cpu_median": statistics.median(x["cpu"] for x in v),
                          "rss_mb_max": max(x["rss_mb"] for x in v)}
        results["workloads"][name] = {"records": total, "sizes": sizes, "peers": summary}
        print(json.dumps({name: results["workloads"][name]}, indent=1), flush=True)
    out = Path(__file__).resolve().parent / "results" / "archive.json"
    out.write_text(json.dumps(results, indent=1))
    e2e.log(f"saved {out}")


if __name__ == "__main__":
    main()
