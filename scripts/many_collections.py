"""Measures docrepl with many collections, for scripts/many_collections.sh.

usage: many_collections.py create SOURCE_PORT DB N
       many_collections.py measure SOURCE_PORT TARGET_PORT STATUS_PORT DB N PID LOG

`create` makes N collections `c0000`.. with one document each. `measure` waits (at most
300 s) until the status page shows every collection streaming, the sink holding every
topic's partition and the target holding every collection's copied document (the first
write to each new target collection creates it, seconds for hundreds at once: startup,
not lag); then, under a background load of LOAD docs/s (env, default 1000) spread over
random collections, writes one probe document to a random collection every 0.05 s for
30 s (20 docs/s) and watches the target for each, and prints one line of `key=value`:
seconds until all streamed / assigned / copied, lease-loss warnings in the log, source
connections docrepl holds, end-to-end lag p50/p99/max of the probes, docrepl CPU % of a
core and RSS MB over an idle minute after the load.
"""
import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.request

from pymongo import MongoClient


def create(source_port, db, n):
    client = MongoClient("127.0.0.1", source_port, directConnection=True)
    for i in range(n):
        client[db][f"c{i:04d}"].insert_one({"_id": "seed"})


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.load(r)


def proc(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(")")[1].split()
    ticks = int(fields[11]) + int(fields[12])
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return ticks, rss / 1024


def measure(source_port, target_port, status_port, db, n, pid, log):
    started = time.time()
    streaming = assigned = 0
    all_streaming_s = all_assigned_s = None
    while time.time() - started < 300 and (all_streaming_s is None or all_assigned_s is None):
        try:
            report = status(status_port)
            streaming = sum(1 for c in report.get("collections", {}).values() if c.get("state") == "streaming")
            assigned = len(report.get("partitions", {}))
        except OSError:
            pass
        if streaming >= n and all_streaming_s is None:
            all_streaming_s = time.time() - started
        if assigned >= int(os.environ.get("EXPECT_PARTITIONS", n)) and all_assigned_s is None:
            all_assigned_s = time.time() - started
        time.sleep(0.5)

    source = MongoClient("127.0.0.1", source_port, directConnection=True)
    target = MongoClient("127.0.0.1", target_port, directConnection=True)
    copied_s = None
    while time.time() - started < 600:
        names = set(target[db].list_collection_names())
        if all(f"c{i:04d}" in names for i in range(n)) and all(target[db][f"c{i:04d}"].find_one({"_id": "seed"}) for i in range(n)):
            copied_s = time.time() - started
            break
        time.sleep(1)
    conns = [c for c in source.admin.command("currentOp", {"$all": True})["inprog"] if c.get("appName") == "docrepl"]
    written, seen, lock = {}, {}, threading.Lock()
    done = threading.Event()

    def watch():
        while not (done.is_set() and len(seen) == len(written)):
            with lock:
                pending = [(k, c) for k, c in written.items() if k not in seen]
            for key, coll in pending:
                if target[db][coll].find_one({"_id": key}, {"_id": 1}) is not None:
                    seen[key] = time.time()
            if done.is_set() and time.time() - last[0] > 60:
                break
            time.sleep(0.01)

    rate = int(os.environ.get("LOAD", "1000"))

    def load():
        # Batches of 10 to a random collection, paced to `rate` docs/s in all.
        sent, t_start = 0, time.time()
        while not done.is_set():
            coll = f"c{random.randrange(n):04d}"
            source[db][coll].insert_many([{"load": sent + k} for k in range(10)])
            sent += 10
            ahead = sent / rate - (time.time() - t_start)
            if ahead > 0:
                time.sleep(ahead)
        loaded[0] = sent / (time.time() - t_start)

    loaded = [0.0]
    last = [time.time()]
    watcher = threading.Thread(target=watch)
    watcher.start()
    loader = threading.Thread(target=load)
    if rate > 0:
        loader.start()
    for i in range(600):
        coll = f"c{random.randrange(n):04d}"
        key = f"probe-{i}"
        source[db][coll].insert_one({"_id": key})
        with lock:
            written[key] = coll
            written_at[key] = time.time()
        last[0] = time.time()
        time.sleep(0.05)
    done.set()
    watcher.join()
    if rate > 0:
        loader.join()
    lags = sorted((seen[k] - written_at[k]) * 1000 for k in seen)
    q = statistics.quantiles(lags, n=100) if len(lags) >= 2 else [float("nan")] * 99

    hz = os.sysconf("SC_CLK_TCK")
    t0, _ = proc(pid)
    time.sleep(60)
    t1, rss = proc(pid)
    with open(log) as f:
        lease_lost = sum(1 for line in f if "lease not renewed in time" in line)
    print(
        f"collections={n} topic_per={os.environ.get('TOPIC_PER', 'collection')} all_streaming_s={all_streaming_s if all_streaming_s is None else round(all_streaming_s, 1)} "
        f"sink_has_every_topic_s={all_assigned_s if all_assigned_s is None else round(all_assigned_s, 1)} "
        f"target_copied_s={copied_s if copied_s is None else round(copied_s, 1)} load_docs_per_s={loaded[0]:.0f} "
        f"streaming={streaming} lease_losses={lease_lost} source_connections={len(conns)} "
        f"lag_p50_ms={q[49]:.0f} lag_p99_ms={q[98]:.0f} lag_max_ms={max(lags) if lags else float('nan'):.0f} "
        f"seen={len(seen)}/{len(written)} idle_cpu_pct={(t1 - t0) / hz / 60 * 100:.1f} rss_mb={rss:.0f}"
    )


written_at = {}
if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        measure(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8])
