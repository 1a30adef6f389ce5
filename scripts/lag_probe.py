"""End-to-end lag probe for scripts/bench.sh: while a load runs, inserts a marker
document into the source collection every INTERVAL seconds for DURATION seconds, watches
the target for each marker, and prints the lag (write acknowledged on the source ->
visible on the target) as `p50_ms p99_ms max_ms samples`. With LAG_PROBE_TRACE=FILE,
also each marker's send time (Unix seconds, and seconds since the first) and lag, one per
line, to FILE: to tell a steady tail from a few stalls.

usage: lag_probe.py SOURCE_PORT TARGET_PORT DATABASE COLLECTION DURATION INTERVAL
"""
import os
import statistics
import sys
import threading
import time

from pymongo import MongoClient

source_port, target_port, db, coll = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
duration, interval = float(sys.argv[5]), float(sys.argv[6])
source = MongoClient("127.0.0.1", source_port, directConnection=True)[db][coll]
target = MongoClient("127.0.0.1", target_port, directConnection=True)[db][coll]

written = {}  # marker _id -> time its insert was acknowledged
wall = {}  # marker _id -> the same as Unix time (for the trace)
seen = {}  # marker _id -> time it was first visible on the target
lock = threading.Lock()
done_writing = threading.Event()


def watch():
    # Polls for the markers not seen yet; stops 60 s after the last write at the latest.
    deadline = None
    while True:
        with lock:
            pending = [k for k in written if k not in seen]
        if pending:
            for doc in target.find({"_id": {"$in": pending}}, {"_id": 1}):
                seen.setdefault(doc["_id"], time.monotonic())
        if done_writing.is_set():
            deadline = deadline or time.monotonic() + 60
            if not pending or time.monotonic() > deadline:
                return
        time.sleep(0.01)


watcher = threading.Thread(target=watch)
watcher.start()
end = time.monotonic() + duration
i = 0
while time.monotonic() < end:
    marker = f"lag-probe-{i}"
    source.insert_one({"_id": marker, "probe": i})
    with lock:
        written[marker] = time.monotonic()
        wall[marker] = time.time()
    i += 1
    time.sleep(interval)
done_writing.set()
watcher.join()

trace = os.environ.get("LAG_PROBE_TRACE")
if trace and written:
    first = min(written.values())
    with open(trace, "w") as out:
        for k, t in sorted(written.items(), key=lambda kv: kv[1]):
            lag = f"{(seen[k] - t) * 1000:.0f}" if k in seen else "missing"
            out.write(f"{wall[k]:.2f} {t - first:.2f} {lag}\n")

lags = sorted((seen[k] - written[k]) * 1000 for k in written if k in seen)
missing = len(written) - len(lags)
if not lags:
    print("nan nan nan 0")
    sys.exit(1)
p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
print(f"{statistics.median(lags):.0f} {p99:.0f} {lags[-1]:.0f} {len(lags)}")
sys.exit(1 if missing else 0)
