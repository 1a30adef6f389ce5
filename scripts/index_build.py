#!/usr/bin/env python3
"""Measures what the sink's choice costs on the target: secondary indexes built before an
initial copy (every copied document maintains them) or after it (one build over the copied
collection). Writes as the sink does: unordered `insert` commands of 2,500 documents from 4
threads (partitions), into fresh collections of a scratch database, alternating the two
orders, `--rounds` times each; prints each run and the medians.

    ~/.cache/docrepl/venv/bin/python scripts/index_build.py --uri mongodb://127.0.0.1:27217/?replicaSet=rs-target --docs 200000
"""
import argparse
import concurrent.futures
import datetime
import random
import statistics
import time

from pymongo import MongoClient

INDEXES = [
    {"key": {"a": 1, "b": -1}, "name": "a_b"},
    {"key": {"email": 1}, "name": "email_1"},  # the source's unique index, replicating form
    {"key": {"at": 1}, "name": "at_1"},  # a TTL index, replicating form
    {"key": {"tags": 1}, "name": "tags_1"},  # multikey
]


def documents(n, seed):
    rng = random.Random(seed)
    start = datetime.datetime(2026, 1, 1)
    for i in range(n):
        yield {
            "_id": i,
            "a": rng.randrange(1000),
            "b": rng.randrange(1000),
            "email": f"user{rng.randrange(10**9)}@example.com",
            "at": start + datetime.timedelta(seconds=rng.randrange(10**7)),
            "tags": [f"t{rng.randrange(50)}" for _ in range(3)],
            "pad": "x" * 200,
        }


def copy(coll, docs, batch=2500, threads=4):
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: coll.database.command("insert", coll.name, documents=b, ordered=False), batches))


def run(db, order, docs, round_):
    coll = db[f"{order}_{round_}"]
    coll.drop()
    db.create_collection(coll.name)
    started = time.monotonic()
    if order == "before":
        db.command("createIndexes", coll.name, indexes=INDEXES)
        copy(coll, docs)
        built = 0.0
    else:
        copy(coll, docs)
        mid = time.monotonic()
        db.command("createIndexes", coll.name, indexes=INDEXES)
        built = time.monotonic() - mid
    total = time.monotonic() - started
    coll.drop()
    return total, built


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--docs", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    db = MongoClient(a.uri)["docrepl_index_build"]
    docs = list(documents(a.docs, 42))
    results = {"before": [], "after": []}
    for r in range(a.rounds):
        for order in ("before", "after") if r % 2 == 0 else ("after", "before"):
            total, built = run(db, order, docs, r)
            results[order].append(total)
            extra = f" (of which the index build {built:.2f} s)" if order == "after" else ""
            print(f"round {r + 1}: indexes {order} the copy: {a.docs} docs, {len(INDEXES)} indexes, {total:.2f} s{extra}", flush=True)
    before, after = statistics.median(results["before"]), statistics.median(results["after"])
    print(f"median: before {before:.2f} s ({a.docs / before:,.0f} docs/s), after {after:.2f} s ({a.docs / after:,.0f} docs/s): after/before = {after / before:.2f}")
    db.client.drop_database(db.name)


if __name__ == "__main__":
    main()
