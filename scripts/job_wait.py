"""Waits for a benchmark job's end on the target, for scripts/bench_jobs.sh: polls every
50 ms, on one connection, until COLLECTION holds at least N documents (the server's
count from metadata, which costs the server nothing) or, with MIN_ID, until N documents
with `_id >= MIN_ID` (the markers that close a job of updates; an `_id` range on the
index). Prints `first_write done` as Unix times: when the count first moved from where
it started, and when it reached N. Gives up after TIMEOUT seconds (exit 1, with the
count it last saw).

usage: job_wait.py PORT DATABASE COLLECTION N [MIN_ID] [TIMEOUT]
"""
import sys
import time

from pymongo import MongoClient

port, db, coll, want = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
min_id = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[5] != "-" else None
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 1800.0
target = MongoClient("127.0.0.1", port, directConnection=True)[db][coll]


def count():
    if min_id is None:
        return target.estimated_document_count()
    return target.count_documents({"_id": {"$gte": min_id}})


deadline = time.time() + timeout
start = count()
first = None
seen = start
while True:
    seen = count()
    now = time.time()
    if first is None and seen != start:
        first = now
    if seen >= want:
        print(f"{first or now:.3f} {now:.3f}")
        break
    if now > deadline:
        print(f"job_wait: {db}.{coll} holds {seen} of {want} after {timeout:.0f} s", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.05)
