#!/usr/bin/env python3
"""End-to-end benchmark of kmirror against its peers, on librdkafka mock clusters hosted by
`kmirror dev-cluster` in their own processes. Run it through `benches/e2e.sh`, which installs
the peers and builds kmirror first; BENCHMARKS.md explains every figure.

For each workload (record size x partitions) one source cluster is seeded once, and every
peer copies the same records from it, each run into a fresh target cluster (a new
dev-cluster process, so every run writes an empty topic and memory is returned):

  consume-only   kcat -C ... -e -o beginning -q >/dev/null     (the broker's read ceiling)
  produce-only   kcat -P ... -K: -l DUMP                          (the broker's write ceiling)
  kcat pipe      kcat -C ... -K: -e | kcat -P ... -K:
  python peer    benches/peer_copy.py (confluent-kafka, assign, produce, flush)
  kmirror        kmirror run -c ROUTING --once --progress 0       (defaults)
  kmirror tuned  the same, with fetch.queue.backoff.ms=10 on the source consumer

Per run it records wall time, user+sys CPU and peak RSS of the copying processes (from
/usr/bin/time), CPU of the source and target dev-cluster processes (from /proc), and for
kmirror the CPU of each thread (sampled from /proc every 50 ms). Every copy is checked:
the target must hold exactly the records seeded, none deleted by the mock's retention.

Workload tenant/200B/64p (issue 13) is a tenant-migration route: 200 B records of ten
tenants, copied by kmirror without a filter and with `filter = { json = "$.tenant_id",
equals = "acme" }` (one record in ten selected; the target must hold exactly those), runs
alternated; `--baseline-bin` adds another build's filter (e.g. before the JSON scan).

Subcommands `seed`, `load` and `probe` are helpers this script runs as child processes.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# KMIRROR_BIN measures another build (e.g. a clean checkout of a commit); default: this tree's.
KMIRROR = Path(os.environ.get("KMIRROR_BIN") or ROOT / "target" / "release" / "kmirror")
# KMIRROR_CLUSTER_BIN hosts the mock clusters with another build than the one measured, so two
# builds compared (e.g. with different allocators) copy between the same brokers.
CLUSTER_BIN = Path(os.environ.get("KMIRROR_CLUSTER_BIN") or KMIRROR)
PEER = ROOT / "benches" / "peer_copy.py"
HZ = os.sysconf("SC_CLK_TCK")
KEY_BYTES = 12  # "customer-NNN" is 10-12 bytes; MB/s counts key + value bytes

# name, value bytes, partitions, records per partition. The mock keeps at most 5 MB per
# partition (it deletes the oldest batches beyond that), so a partition holds <= ~4 MB here.
WORKLOADS = [
    ("200B/1p", 200, 1, 15000),
    ("200B/8p", 200, 8, 15000),
    ("200B/64p", 200, 64, 15000),
    # 1 KiB (issue 13): the record size Redpanda Migrator publishes its figure for.
    ("1KiB/64p", 1024, 64, 3800),
    ("4KiB/1p", 4096, 1, 960),
    ("4KiB/8p", 4096, 8, 960),
    ("4KiB/64p", 4096, 64, 960),
]
PEERS = ["consume-only", "produce-only", "kcat pipe", "python peer", "kmirror", "kmirror tuned"]
# The tenant-migration route (issue 13): 200 B records of 10 tenants, one in ten "acme"; the
# same route copies them all, then only acme's through a JSON field filter. Figures are
# records READ per second (the filter's cost is on the read path; it writes a tenth).
TENANT_WORKLOAD = ("tenant/200B/64p", 200, 64, 15000)
TENANTS = 10
TENANT_FILTER = '{ json = "$.tenant_id", equals = "acme" }'
# The same scan on every record but nothing dropped: the filter's cost alone, the writes equal.
ALL_FILTER = '{ json = "$.tenant_id", exists = true }'
TENANT_PEERS = ["kmirror no filter", "kmirror tenant filter", "kmirror filter selecting all",
                "baseline tenant filter", "baseline filter selecting all"]
TUNED = {"fetch.queue.backoff.ms": "10"}
# Issue 12, only when named with --peers: at-least-once and exactly-once with the same
# checkpoint store (a compacted topic on the target), so they differ only in the delivery.
DELIVERY_PEERS = {
    "kmirror kafka-store": "",
    "kmirror exactly-once": '[delivery]\nguarantee = "exactly_once"\n',
    # Fewer, larger transactions: what the commit costs, by difference.
    "kmirror exactly-once big-txn": '[delivery]\nguarantee = "exactly_once"\ncommit_interval = "5s"\n'
                                    'max_records_per_transaction = 1000000\n',
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# dev-cluster processes


class DevCluster:
    """`kmirror dev-cluster` in its own process: one cluster, one broker, given topics."""

    def __init__(self, topics, clusters=1):
        args = [str(CLUSTER_BIN), "-q", "dev-cluster", "--clusters", str(clusters), "--brokers", "1"]
        for t, p in topics:
            args += ["--topic", f"{t}:{p}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.bootstraps = []
        for line in self.proc.stdout:
            if "bootstrap=" in line:
                self.bootstraps.append(line.strip().split("bootstrap=", 1)[1])
            if line.startswith("ready"):
                break
        if not self.bootstraps:
            raise SystemExit("dev-cluster did not start")
        self.bootstrap = self.bootstraps[0]

    def cpu(self):
        """User + system CPU seconds of the whole process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / HZ

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------
# helpers run as child processes


def value_for(n, size, ts_ns=0, tenants=1):
    tenant = "acme" if n % tenants == 0 else "tenant-%02d" % (n % tenants)
    head = '{"ts_ns":%d,"tenant_id":"%s","order_id":%d,"pad":"' % (ts_ns, tenant, n)
    return (head + "x" * (size - len(head) - 2) + '"}').encode()


def cmd_seed(a):
    """Seeds TOPIC with COUNT records per partition, partition by partition, in ~1 MB
    producer batches: the mock returns one stored batch per partition per fetch, so large
    batches make it answer a fetch with ~1 MB per partition, as a real broker would."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "linger.ms": 100,
        "batch.size": 1000000,
        "batch.num.messages": 100000,
        "queue.buffering.max.messages": 1000000,
        "queue.buffering.max.kbytes": 2097151,
    })
    n = 0
    for part in range(a.partitions):
        for _ in range(a.count):
            v = value_for(n, a.size, tenants=a.tenants)
            while True:
                try:
                    p.produce(a.topic, v, b"customer-%d" % (n % 997), partition=part,
                              headers=[("trace-id", b"trace-%d" % n)])
                    break
                except BufferError:
                    p.poll(0.01)
            n += 1
            if n % 5000 == 0:
                p.poll(0)
    if p.flush(120):
        raise SystemExit("seed: not every record was acknowledged")
    print(n)


def cmd_load(a):
    """Produces to TOPIC at RATE records/s for SECONDS, each value carrying the wall-clock
    time (ns) of its produce() call."""
    from confluent_kafka import Producer

    # linger.ms=5 as kmirror's own producer: the mock returns one stored batch per partition per
    # fetch, so tiny batches would make every reader (probe included) fall behind.
    p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 5})
    start = time.time()
    n = 0
    total = int(a.rate * a.seconds)
    while n < total:
        due = min(total, int((time.time() - start) * a.rate) + 1)
        while n < due:
            try:
                p.produce(a.topic, value_for(n, a.size, time.time_ns()), b"customer-%d" % (n % 997),
                          partition=n % a.partitions)
                n += 1
            except BufferError:
                p.poll(0.001)
        p.poll(0)
        time.sleep(0.0005)
    p.flush(30)
    print(json.dumps({"produced": n, "seconds": time.time() - start}))


def cmd_probe(a):
    """Reads TOPIC (every partition, from the beginning) until EXPECT records or DEADLINE,
    and prints latency percentiles: receive wall-clock minus the produce wall-clock embedded
    in the value. Records produced in the first WARMUP seconds are left out."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "latency-probe",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": a.fetch_wait_ms,
    })
    c.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING) for p in range(a.partitions)])
    lat = []
    seen = 0
    first_ts = None
    deadline = time.time() + a.deadline
    while seen < a.expect and time.time() < deadline:
        # poll() returns as soon as one record is there (consume(n, timeout) would wait for
        # n records or the timeout, adding up to the timeout to every latency); then take
        # whatever else is already fetched without waiting.
        m = c.poll(0.05)
        now = time.time_ns()
        if m is None:
            continue
        msgs = [m] + c.consume(num_messages=1000, timeout=0)
        for m in msgs:
            if m.error():
                continue
            seen += 1
            v = m.value()
            ts = int(v[9:v.index(b",")])
            if first_ts is None:
                first_ts = ts
            if ts - first_ts >= a.warmup * 1e9:
                lat.append((now - ts) / 1e6)
    c.close()
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    print(json.dumps({"received": seen, "sampled": len(lat), "p50_ms": pct(0.50),
                      "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": lat[-1] if lat else None}))


# ---------------------------------------------------------------------------------------
# measuring one run


class ThreadSampler(threading.Thread):
    """Samples per-thread CPU of a process (and its children's threads are not included)."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.last = {}
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                for tid in os.listdir(f"/proc/{self.pid}/task"):
                    with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                        s = f.read()
                    comm = s[s.index("(") + 1:s.rindex(")")]
                    fl = s[s.rindex(")") + 2:].split()
                    self.last[tid] = (comm, (int(fl[11]) + int(fl[12])) / HZ)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            time.sleep(0.05)

    def by_name(self):
        out = {}
        for comm, cpu in self.last.values():
            name = thread_group(comm)
            out[name] = out.get(name, 0) + cpu
        return out


def thread_group(comm):
    if comm.startswith("kmirror-") and comm not in ("kmirror-signals",):
        return "reader"
    if comm.startswith("producer poll"):
        return "producer poll"
    if comm.startswith("rdk:broker"):
        return "librdkafka broker threads"
    return "other"


def timed(cmd, tmp, name, **kw):
    """Starts `cmd` under /usr/bin/time; returns (Popen, path of its report)."""
    out = Path(tmp) / f"time-{name}.txt"
    p = subprocess.Popen(["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(out)] + cmd, **kw)
    return p, out


def kill_tree(p):
    """Kills a /usr/bin/time process and the command it runs, if still running."""
    if p.poll() is not None:
        return
    kid = child_pid(p.pid, wait=0)
    if kid:
        try:
            os.kill(kid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.kill()
    p.wait()


def read_time(path):
    wall, user, sys_, rss = path.read_text().strip().splitlines()[-1].split()
    return {"cpu": float(user) + float(sys_), "rss_mb": int(rss) / 1024}


def child_pid(pid, wait=2.0):
    end = time.time() + wait
    while True:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if kids:
                return int(kids[0])
        except FileNotFoundError:
            return None
        if time.time() >= end:
            return None
        time.sleep(0.005)


def routing_file(tmp, run_id, src, dst, topic, properties=None, route_filter=None, delivery=None):
    props = ""
    if properties:
        props = "properties = { " + ", ".join(f'"{k}" = "{v}"' for k, v in properties.items()) + " }\n"
    store = "" if delivery is None else 'store = "kafka"\n'
    text = f"""# generated by benches/e2e.py
[checkpoints]
dir = "{tmp}/checkpoints-{run_id}"
job = "bench"
{store}
{delivery or ""}
[clusters.src]
bootstrap = "{src}"
{props}
[clusters.dst]
bootstrap = "{dst}"

[[routes]]
name = "bench"
source = "src"
topics = ["{topic}"]
target = "dst"
target_topic = "bench"
partitioning = "preserve"
start = "earliest"
"""
    if route_filter:
        text += f"filter = {route_filter}\n"
    path = Path(tmp) / f"routing-{run_id}.toml"
    path.write_text(text)
    return path


def target_counts(bootstrap, topic, partitions):
    """(records present, records deleted by retention) on a topic, from its watermarks
    (exact on the mock: one record per offset, no transactions, no compaction)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-check"})
    present = deleted = 0
    for p in range(partitions):
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        present += hi - lo
        deleted += lo
    c.close()
    return present, deleted


def run_peer(peer, src, topic, partitions, expect, tmp, run_id, dump=None, route_filter=None, binary=None):
    """One measured run of `peer` copying `topic` (all partitions) from the source cluster
    `src` (a DevCluster). Returns a dict of measurements. `expect`: records the target must
    hold (fewer than read when `route_filter` selects); `binary`: another kmirror build."""
    needs_target = peer != "consume-only"
    dst_topics = [("bench", partitions)]
    if peer in DELIVERY_PEERS:
        # The mock has no CreateTopics: the kafka store's topic is made with the cluster.
        dst_topics.append(("kmirror-checkpoints", 1))
    dst = DevCluster(dst_topics) if needs_target else None
    procs = []
    sampler = None
    try:
        cpu_src0 = src.cpu()
        cpu_dst0 = dst.cpu() if dst else 0.0
        t0 = time.perf_counter()
        if peer == "consume-only":
            procs.append(timed(["kcat", "-C", "-b", src.bootstrap, "-t", topic, "-e", "-o", "beginning",
                                "-q"], tmp, "c", stdout=subprocess.DEVNULL))
        elif peer == "produce-only":
            procs.append(timed(["kcat", "-P", "-b", dst.bootstrap, "-t", "bench", "-K:", "-l", str(dump)],
                               tmp, "p"))
        elif peer == "kcat pipe":
            c = timed(["kcat", "-C", "-b", src.bootstrap, "-t", topic, "-e", "-o", "beginning", "-q",
                       "-K:"], tmp, "c", stdout=subprocess.PIPE)
            p = timed(["kcat", "-P", "-b", dst.bootstrap, "-t", "bench", "-K:"], tmp, "p",
                      stdin=c[0].stdout)
            c[0].stdout.close()
            procs += [c, p]
        elif peer == "python peer":
            procs.append(timed([sys.executable, str(PEER), src.bootstrap, topic, dst.bootstrap, "bench"],
                               tmp, "py", stdout=subprocess.DEVNULL))
        elif peer.startswith("kmirror"):
            props = TUNED if peer == "kmirror tuned" else None
            rf = routing_file(tmp, run_id, src.bootstrap, dst.bootstrap, topic, props, route_filter,
                              DELIVERY_PEERS.get(peer))
            procs.append(timed([str(binary or KMIRROR), "-q", "run", "-c", str(rf), "--once", "--progress", "0"],
                               tmp, "km", stdout=subprocess.DEVNULL))
            pid = child_pid(procs[0][0].pid)
            if pid:
                sampler = ThreadSampler(pid)
                sampler.start()
        else:
            raise ValueError(peer)
        codes = [p.wait() for p, _ in procs]
        wall = time.perf_counter() - t0
        if sampler:
            sampler.stop = True
            sampler.join()
        cpu_src = src.cpu() - cpu_src0
        cpu_dst = (dst.cpu() - cpu_dst0) if dst else 0.0
        if any(codes):
            raise SystemExit(f"{peer}: exit codes {codes}")
        reports = [read_time(path) for _, path in procs]
        r = {
            "peer": peer,
            "wall": wall,
            "cpu": sum(x["cpu"] for x in reports),
            "rss_mb": max(x["rss_mb"] for x in reports),
            "rss_each_mb": [x["rss_mb"] for x in reports],
            "cpu_src_cluster": cpu_src,
            "cpu_dst_cluster": cpu_dst,
            "threads": sampler.by_name() if sampler else None,
        }
        if dst:
            present, deleted = target_counts(dst.bootstrap, "bench", partitions)
            if present != expect or deleted:
                raise SystemExit(f"{peer}: target holds {present} records ({deleted} deleted by "
                                 f"retention); expected {expect}")
            r["dst_rss_mb"] = dst.rss_mb()
        return r
    finally:
        for p, _ in procs:
            kill_tree(p)
        if dst:
            dst.stop()


# ---------------------------------------------------------------------------------------
# the benchmark


def seed(bootstrap, topic, partitions, count, size, tenants=1):
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "seed", bootstrap, topic, str(partitions), str(count),
                    str(size), "--tenants", str(tenants)], check=True, stdout=subprocess.DEVNULL)
    log(f"  seeded {topic}: {partitions} x {count} records of {size} B in {time.perf_counter() - t:.1f}s")


def median_min_max(xs):
    return statistics.median(xs), min(xs), max(xs)


def backlog(a, results):
    fixed = {}  # (peer, partitions) -> median wall of a 1-record-per-partition copy
    for name, size, parts, per in WORKLOADS:
        if a.only and not any(o == name for o in a.only):
            continue
        n = parts * per
        log(f"workload {name}: {n} records")
        src = DevCluster([("bench", parts), ("one", parts), ("quarter", parts)])
        try:
            seed(src.bootstrap, "bench", parts, per, size)
            present, deleted = target_counts(src.bootstrap, "bench", parts)
            if present != n or deleted:
                raise SystemExit(f"seeding lost records to retention ({present} of {n})")
            with tempfile.TemporaryDirectory(prefix="kmirror-e2e-") as tmp:
                dump = Path(tmp) / "dump.txt"
                with open(dump, "wb") as f:
                    subprocess.run(["kcat", "-C", "-b", src.bootstrap, "-t", "bench", "-e", "-o",
                                    "beginning", "-q", "-K:"], stdout=f, check=True)
                peers = [p for p in PEERS if not a.peers or p in a.peers]
                peers += [p for p in DELIVERY_PEERS if a.peers and p in a.peers]
                runs = {p: [] for p in peers}
                for rep in range(a.runs):
                    for peer in peers:
                        r = run_peer(peer, src, "bench", parts, n, tmp, f"{rep}-{peer.replace(' ', '-')}", dump)
                        runs[peer].append(r)
                        log(f"  run {rep + 1}/{a.runs} {peer:14} {r['wall']:6.2f}s  cpu {r['cpu']:5.2f}s  "
                            f"rss {r['rss_mb']:6.1f} MB  src-cluster cpu {r['cpu_src_cluster']:5.2f}s  "
                            f"dst-cluster cpu {r['cpu_dst_cluster']:5.2f}s"
                            + (f"  threads {fmt_threads(r['threads'])}" if r["threads"] else ""))
                if size == 200 and not a.no_fixed:
                    seed(src.bootstrap, "one", parts, 1, size)
                    for peer in peers:
                        if peer == "produce-only":
                            continue
                        walls = [run_peer(peer, src, "one", parts, parts, tmp,
                                          f"one-{rep}-{peer.replace(' ', '-')}")["wall"]
                                 for rep in range(min(a.runs, 3))]
                        fixed[(peer, parts)] = statistics.median(walls)
                        log(f"  fixed cost {peer:14} {fixed[(peer, parts)]:.2f}s (1 record per partition)")
                rss_small = []
                if name == "200B/64p" and "kmirror" in peers:
                    # kmirror's memory at a quarter of the backlog, same partitions and records.
                    seed(src.bootstrap, "quarter", parts, per // 4, size)
                    for rep in range(min(a.runs, 3)):
                        rss_small.append(run_peer("kmirror", src, "quarter", parts, n // 4, tmp,
                                                  f"q-{rep}", dump)["rss_mb"])
                    log(f"  kmirror peak RSS at {n // 4} records: {rss_small}")
                results["workloads"].append({
                    "name": name, "size": size, "partitions": parts, "records": n,
                    "runs": runs, "rss_quarter_backlog_mb": rss_small,
                })
                results["fixed"] = {f"{p}|{k}": v for (p, k), v in fixed.items()}
                save(a, results)
        finally:
            src.stop()


def tenant_migration(a, results):
    """The tenant-migration route with and without its JSON field filter, alternated run by
    run on one seeded source (and, with --baseline-bin, the filter in another build)."""
    name, size, parts, per = TENANT_WORKLOAD
    if a.only and name not in a.only:
        return
    n = parts * per
    selected = len(range(0, n, TENANTS))  # value_for: record n is acme's when n % TENANTS == 0
    peers = [p for p in TENANT_PEERS if not p.startswith("baseline") or a.baseline_bin]
    log(f"workload {name}: {n} records, {selected} of them acme's")
    src = DevCluster([("bench", parts)])
    try:
        seed(src.bootstrap, "bench", parts, per, size, tenants=TENANTS)
        runs = {p: [] for p in peers}
        with tempfile.TemporaryDirectory(prefix="kmirror-e2e-") as tmp:
            for rep in range(a.runs):
                for peer in peers:
                    route_filter = (None if peer.endswith("no filter") else
                                    ALL_FILTER if peer.endswith("selecting all") else TENANT_FILTER)
                    expect = selected if route_filter == TENANT_FILTER else n
                    r = run_peer("kmirror", src, "bench", parts, expect, tmp,
                                 f"t{rep}-{peer.replace(' ', '-')}", route_filter=route_filter,
                                 binary=a.baseline_bin if peer.startswith("baseline") else None)
                    r["peer"] = peer
                    runs[peer].append(r)
                    log(f"  run {rep + 1}/{a.runs} {peer:22} {r['wall']:6.2f}s  {n / r['wall']:9,.0f} read/s  "
                        f"cpu {r['cpu']:5.2f}s  threads {fmt_threads(r['threads'] or {})}")
        results["tenant"] = {"name": name, "size": size, "partitions": parts, "records": n,
                             "selected": selected, "filter": TENANT_FILTER, "all_filter": ALL_FILTER,
                             "baseline_bin": a.baseline_bin, "runs": runs}
        save(a, results)
    finally:
        src.stop()


def save(a, results):
    """Writes what is measured so far, so a failure later in the run loses nothing."""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))


def fmt_threads(t):
    return ", ".join(f"{k} {v:.2f}s" for k, v in sorted(t.items(), key=lambda kv: -kv[1]) if v >= 0.005)


def live(a, results):
    """Replication latency under a steady load: a producer appends to the source at a fixed
    rate with its produce() wall-clock in each value; a probe consumer reads the target and
    records receive time minus that. A baseline phase runs the probe on the source itself
    (no mirror), so the difference is what the mirror hop adds."""
    # 8 partitions. More would give a lagging reader more room (the mock deletes a
    # partition's oldest records beyond 5 MB whether read or not: ~16k records of 200 B, so
    # 8 partitions allow ~1 s of lag at 128k records/s), but under a live load the mock
    # stores many small batches, returns one per partition per fetch and finds it by a
    # linear scan: at 64 partitions the mock itself saturates (probe-only p99 ~0.9 s at
    # 50k records/s), which would measure the mock, not the mirror.
    parts, size, seconds = 8, 200, a.live_seconds
    fetch_wait = "10"
    for rate in a.live_rates:
        n = int(rate * seconds)
        # Issue 12: --live-delivery adds a phase per named delivery peer (the probe reads
        # read_committed, librdkafka's default, so exactly-once shows its commit wait).
        for phase in ["baseline", "kmirror"] + list(a.live_delivery or []):
            src = DevCluster([("live", parts)])
            dst_topics = [("bench", parts)]
            if phase in DELIVERY_PEERS:
                dst_topics.append(("kmirror-checkpoints", 1))  # the kafka store's topic
            dst = DevCluster(dst_topics) if phase != "baseline" else None
            km = None
            try:
                with tempfile.TemporaryDirectory(prefix="kmirror-live-") as tmp:
                    if dst:
                        rf = routing_file(tmp, "live", src.bootstrap, dst.bootstrap, "live",
                                          {"fetch.wait.max.ms": fetch_wait},
                                          delivery=DELIVERY_PEERS.get(phase))
                        km, km_time = timed([str(KMIRROR), "-q", "run", "-c", str(rf), "--progress", "0"],
                                            tmp, "km", stdout=subprocess.DEVNULL)
                        km_pid = child_pid(km.pid)
                        time.sleep(2.0)  # plan + assign before the load starts
                        cpu_km0 = proc_cpu(km_pid)
                    probe = subprocess.Popen(
                        [sys.executable, __file__, "probe", (dst or src).bootstrap,
                         "bench" if dst else "live", str(parts), "--expect", str(n), "--deadline",
                         str(seconds + 20), "--fetch-wait-ms", fetch_wait],
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(1.0)
                    cpu_src0 = src.cpu()
                    load = subprocess.run([sys.executable, __file__, "load", src.bootstrap, "live",
                                           str(parts), str(rate), str(seconds), str(size)],
                                          stdout=subprocess.PIPE, text=True, check=True)
                    lat = json.loads(probe.communicate(timeout=seconds + 40)[0])
                    cpu_src = src.cpu() - cpu_src0
                    achieved = json.loads(load.stdout)
                    row = {"rate": rate, "phase": phase, "seconds": seconds, **lat,
                           "achieved_rate": achieved["produced"] / achieved["seconds"],
                           "cpu_src_cluster": cpu_src}
                    if km:
                        row["kmirror_cpu"] = proc_cpu(km_pid) - cpu_km0
                        if km.poll() is None:
                            os.kill(km_pid, signal.SIGTERM)  # kmirror itself, not /usr/bin/time
                            km.wait(30)
                        else:
                            row["kmirror_exited"] = km.returncode  # e.g. halted on lost records
                        row["kmirror_rss_mb"] = read_time(km_time)["rss_mb"]
                    results["live"].append(row)
                    save(a, results)
                    log(f"  live {rate}/s {phase:20} p50 {lat['p50_ms']} ms  p99 {lat['p99_ms']} ms  "
                        f"max {lat['max_ms']} ms  received {lat['received']}/{n}"
                        + (f"  KMIRROR EXITED ({row['kmirror_exited']})" if "kmirror_exited" in row else ""))
            finally:
                if km:
                    kill_tree(km)
                src.stop()
                if dst:
                    dst.stop()


def proc_cpu(pid):
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except FileNotFoundError:
        return 0.0
    fl = s[s.rindex(")") + 2:].split()
    return (int(fl[11]) + int(fl[12])) / HZ


# ---------------------------------------------------------------------------------------
# report


def report(results):
    out = []
    fixed = results.get("fixed", {})
    if results["workloads"]:
        out.append("| workload | peer | wall s (median, min-max) | records/s | MB/s | net records/s | "
                   "CPU s / M records | MB/s per copier core | peak RSS MB | copier CPU % | src-cluster CPU % | "
                   "dst-cluster CPU % |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w in results["workloads"]:
        n, size, parts = w["records"], w["size"], w["partitions"]
        for peer, runs in w["runs"].items():
            if not runs:
                continue
            wall, lo, hi = median_min_max([r["wall"] for r in runs])
            cpu = statistics.median([r["cpu"] for r in runs])
            rss = max(r["rss_mb"] for r in runs)
            src_pct = statistics.median([r["cpu_src_cluster"] / r["wall"] for r in runs]) * 100
            dst_pct = statistics.median([r["cpu_dst_cluster"] / r["wall"] for r in runs]) * 100
            cop_pct = statistics.median([r["cpu"] / r["wall"] for r in runs]) * 100
            f = fixed.get(f"{peer}|{parts}")
            net = "-"
            if f is not None and peer != "produce-only":
                if wall - f > 0.3:
                    net = f"{n / (wall - f):,.0f}"
                else:
                    net = "(< 0.3 s after fixed cost)"
            mb = n * (size + KEY_BYTES) / wall / 1e6
            # Bytes moved per CPU-second of the copying processes: what one core of the
            # copier sustains, the unit vendors publish (e.g. MB/s per CPU).
            per_core = n * (size + KEY_BYTES) / cpu / 1e6 if cpu > 0 else float("nan")
            out.append(f"| {w['name']} | {peer} | {wall:.2f} ({lo:.2f}-{hi:.2f}) | {n / wall:,.0f} | {mb:.1f} | "
                       f"{net} | {cpu / n * 1e6:.2f} | {per_core:.0f} | {rss:.0f} | {cop_pct:.0f} | {src_pct:.0f} | "
                       f"{dst_pct:.0f} |")
    out.append("")
    if fixed:
        out.append("Fixed cost (median wall s of a copy of 1 record per partition):")
        out.append("")
        out.append("| peer | " + " | ".join(f"{p} partitions" for p in sorted({int(k.split('|')[1]) for k in fixed})) + " |")
        parts_list = sorted({int(k.split('|')[1]) for k in fixed})
        out.append("|---|" + "---|" * len(parts_list))
        for peer in PEERS:
            if any(k.startswith(peer + "|") for k in fixed) and peer != "produce-only":
                out.append(f"| {peer} | " + " | ".join(f"{fixed.get(f'{peer}|{p}', float('nan')):.2f}"
                                                       for p in parts_list) + " |")
        out.append("")
    km_threads = []
    for w in results["workloads"]:
        for peer in ("kmirror", "kmirror tuned"):
            runs = w["runs"].get(peer) or []
            if runs and runs[0]["threads"]:
                names = sorted({k for r in runs for k in r["threads"]})
                med = {k: statistics.median([r["threads"].get(k, 0) for r in runs]) for k in names}
                wall = statistics.median([r["wall"] for r in runs])
                km_threads.append(f"| {w['name']} | {peer} | " + ", ".join(
                    f"{k} {v:.2f}s ({v / wall * 100:.0f}%)" for k, v in sorted(med.items(), key=lambda kv: -kv[1])
                    if v >= 0.005) + " |")
    if km_threads:
        out.append("kmirror CPU by thread (median CPU seconds per run, and % of one core over the wall time):")
        out.append("")
        out.append("| workload | peer | threads |")
        out.append("|---|---|---|")
        out += km_threads
        out.append("")
    for w in results["workloads"]:
        if w.get("rss_quarter_backlog_mb"):
            full = [r["rss_mb"] for r in w["runs"]["kmirror"]]
            out.append(f"kmirror peak RSS, {w['name']}: {w['records'] // 4:,} records -> "
                       f"{statistics.median(w['rss_quarter_backlog_mb']):.0f} MB; {w['records']:,} records -> "
                       f"{statistics.median(full):.0f} MB (median of runs)")
            out.append("")
    t = results.get("tenant")
    if t:
        n = t["records"]
        base = statistics.median([r["wall"] for r in t["runs"]["kmirror no filter"]])
        out.append(f"Tenant migration ({t['name']}, filter = {t['filter']}, {t['selected']:,} of "
                   f"{n:,} records selected; 'selecting all': filter = {t.get('all_filter')}):")
        out.append("")
        out.append("| route | wall s (median, min-max) | records read/s | vs no filter | "
                   "CPU s / M records read | reader thread CPU s |")
        out.append("|---|---|---|---|---|---|")
        for peer, runs in t["runs"].items():
            wall, lo, hi = median_min_max([r["wall"] for r in runs])
            cpu = statistics.median([r["cpu"] for r in runs])
            reader = statistics.median([(r["threads"] or {}).get("reader", 0) for r in runs])
            out.append(f"| {peer} | {wall:.2f} ({lo:.2f}-{hi:.2f}) | {n / wall:,.0f} | {base / wall * 100:.0f}% | "
                       f"{cpu / n * 1e6:.2f} | {reader:.2f} |")
        out.append("")
    if results.get("live"):
        out.append("| load rate (records/s) | achieved | path | p50 ms | p90 ms | p99 ms | max ms | received | "
                   "src-cluster CPU s | kmirror CPU s | kmirror RSS MB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["live"]:
            path = "producer -> source -> probe" if r["phase"] == "baseline" else \
                "producer -> source -> kmirror -> target -> probe"
            if r["phase"] in DELIVERY_PEERS:
                path += f" ({r['phase']})"
            f = lambda v: "-" if v is None else f"{v:.1f}"
            if "kmirror_exited" in r:
                path += f" (kmirror EXITED with {r['kmirror_exited']})"
            out.append(f"| {r['rate']:,} | {r['achieved_rate']:,.0f} | {path} | {f(r['p50_ms'])} | {f(r['p90_ms'])} | "
                       f"{f(r['p99_ms'])} | {f(r['max_ms'])} | {r['received']:,} | {r['cpu_src_cluster']:.2f} | "
                       f"{f(r.get('kmirror_cpu'))} | {f(r.get('kmirror_rss_mb'))} |")
        out.append("")
    return "\n".join(out)


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    run = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    return {"nproc": run("nproc"), "cpu": model, "free": run("free -h"), "uptime_before": run("uptime"),
            "kmirror": os.environ.get("KMIRROR_COMMIT") or run(f"git -C {ROOT} rev-parse --short HEAD"),
            "kmirror_bin": str(KMIRROR), "kcat": run("kcat -V | head -1")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("seed")
    for k in ("bootstrap", "topic"):
        s.add_argument(k)
    for k in ("partitions", "count", "size"):
        s.add_argument(k, type=int)
    s.add_argument("--tenants", type=int, default=1, help="tenants the records are spread over")
    s = sub.add_parser("load")
    s.add_argument("bootstrap")
    s.add_argument("topic")
    s.add_argument("partitions", type=int)
    s.add_argument("rate", type=int)
    s.add_argument("seconds", type=float)
    s.add_argument("size", type=int)
    s = sub.add_parser("probe")
    s.add_argument("bootstrap")
    s.add_argument("topic")
    s.add_argument("partitions", type=int)
    s.add_argument("--expect", type=int, required=True)
    s.add_argument("--deadline", type=float, required=True)
    s.add_argument("--fetch-wait-ms", default="10")
    s.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5, help="runs per peer and workload (median, min, max)")
    ap.add_argument("--only", nargs="*", help="workload names, e.g. 200B/64p")
    ap.add_argument("--peers", nargs="*", help=f"subset of: {', '.join(PEERS)}; also (only when named) "
                    f"{', '.join(DELIVERY_PEERS)}")
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed-cost runs")
    ap.add_argument("--no-backlog", action="store_true", help="skip the backlog workloads")
    ap.add_argument("--baseline-bin", metavar="KMIRROR",
                    help=f"another kmirror build whose tenant filter runs beside this one's ({TENANT_WORKLOAD[0]})")
    ap.add_argument("--live-rates", type=int, nargs="*", default=[5000, 20000, 50000, 100000],
                    help="live workload rates in records/s (none: skip the live workload)")
    ap.add_argument("--live-seconds", type=float, default=10)
    ap.add_argument("--live-delivery", nargs="*", choices=list(DELIVERY_PEERS),
                    help="also measure the live workload through these delivery peers (issue 12)")
    ap.add_argument("--tuned", nargs="*", metavar="PROPERTY=VALUE",
                    help="source-consumer properties of the 'kmirror tuned' peer "
                         f"(default: {' '.join(f'{k}={v}' for k, v in TUNED.items())})")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="only print the tables of an earlier run")
    ap.add_argument("--out", default=str(ROOT / "target" / "e2e-bench" / "results.json"))
    a = ap.parse_args()
    if a.cmd == "seed":
        return cmd_seed(a)
    if a.cmd == "load":
        return cmd_load(a)
    if a.cmd == "probe":
        return cmd_probe(a)
    if a.report:
        print(report(json.loads(Path(a.report).read_text())))
        return
    if a.tuned is not None:
        TUNED.clear()
        TUNED.update(kv.split("=", 1) for kv in a.tuned)
    if not KMIRROR.exists():
        raise SystemExit(f"{KMIRROR} missing: run benches/e2e.sh (it builds it)")
    results = {"machine": machine(), "runs": a.runs, "workloads": [], "live": [], "started": time.time()}
    log(f"machine: {results['machine']['nproc']} x {results['machine']['cpu']}; {results['machine']['uptime_before']}")
    if not a.no_backlog:
        backlog(a, results)
        tenant_migration(a, results)
    if a.live_rates:
        log("live workload")
        live(a, results)
    results["minutes"] = (time.time() - results["started"]) / 60
    results["machine"]["uptime_after"] = subprocess.run("uptime", capture_output=True, text=True).stdout.strip()
    save(a, results)
    print(report(results))
    log(f"done in {results['minutes']:.1f} min; raw results in {a.out}; {results['machine']['uptime_after']}")


if __name__ == "__main__":
    main()
