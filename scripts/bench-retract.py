#!/usr/bin/env python3
"""What a retract costs (issue 21), measured on this machine's PostgreSQL and RabbitMQ with the
release binaries (coordinator + W workers, as scripts/bench.py runs them):

  own partition   an N-row batch (default 8,000,000) committed, then `ingest retract`: DETACH and
                  DROP of its partition in one transaction (catalog work only)
  replaced        the same file committed again, then `ingest submit --replaces` of it with the
                  same rows: the new batch's commit detaches and drops the old partition in the
                  transaction of its own attach (reported: the whole submit, and the commit)
  merged          the replacement, with the 56,689-row sample, both folded into one shared
                  partition by `ingest-coordinator --partitions-max 1 merge`, then
                  `ingest retract` of the big batch: one DELETE by batch_id

All along, a reader on a session of its own asks `prices` for one route and day (the index) in a
loop; for each retract the script prints the retract's time (the CLI's request, end to end), the
reader's median answer before it, and the longest any reader's answer took while it ran (how
long a reader waited). It checks that `prices` holds exactly the rows before minus the batch's.
It holds the test environments' shared turn at the services (the lock file ingest-testkit's
`outage::Turn` takes), so no test that stops PostgreSQL or RabbitMQ runs meanwhile.

  cargo build --release --locked --bins && python3 scripts/bench-retract.py [--rows N]
"""

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import threading
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402  (the Stack, psql helpers and paths of the main benchmark)

ROOT, RELEASE, sql = bench.ROOT, bench.RELEASE, bench.sql


class Reader(threading.Thread):
    """A psql session asking one indexed question in a loop: (started, seconds) per answer."""

    def __init__(self, db, question):
        super().__init__(daemon=True)
        self.question, self.answers, self.stopping = question, [], False
        self.psql = subprocess.Popen(bench.PG + ["-X", "-d", db], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self):
        while not self.stopping:
            started = time.monotonic()
            self.psql.stdin.write(self.question + ";\n\\echo __answered\n")
            self.psql.stdin.flush()
            while (line := self.psql.stdout.readline()).strip() != "__answered":
                if not line:
                    raise RuntimeError("the reader's psql ended")
            self.answers.append((started, time.monotonic() - started))
            time.sleep(0.005)

    def stop(self):
        self.stopping = True
        self.join()
        self.psql.stdin.close()
        self.psql.wait()

    def during(self, start, end):
        """Answers that were asked for, or still awaited, between start and end."""
        return [took for asked, took in self.answers if asked <= end and asked + took >= start]

    def median_before(self, start):
        before = [took for asked, took in self.answers if asked + took < start][-200:]
        return statistics.median(before) if before else float("nan")


def submit(stack, path):
    done = subprocess.run([f"{RELEASE}/ingest", "submit", path, "--no-wait"], env=stack.env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("ingest submit failed: " + done.stderr)
    batch = int(sql(stack.db, "SELECT max(id) FROM batches"))
    while True:
        status = bench.get_json(f"{stack.base}/batches/{batch}")
        if status["state"] == "committed":
            return batch
        if status["state"] in ("failed", "cancelled"):
            raise RuntimeError(f"batch {batch} ended {status['state']}: {status.get('error')}")
        time.sleep(0.2)


def totals(db):
    rows, prices = sql(db, "SELECT count(*), coalesce(sum(price), 0) FROM prices").split("|")
    return int(rows), int(prices)


def retract(stack, reader, batch):
    """Retracts `batch` with the CLI while the reader reads; returns what it cost."""
    before = totals(stack.db)
    mine = sql(stack.db, f"SELECT count(*) FROM prices_by_batch WHERE batch_id = {batch}")
    time.sleep(2)  # the reader's baseline
    started = time.monotonic()
    done = subprocess.run([f"{RELEASE}/ingest", "retract", str(batch)], env=stack.env,
                          capture_output=True, text=True)
    ended = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError("ingest retract failed: " + done.stderr)
    time.sleep(1)
    after = totals(stack.db)
    if after[0] != before[0] - int(mine):
        raise RuntimeError(f"prices holds {after[0]} rows, expected {before[0] - int(mine)}")
    waits = reader.during(started, ended)
    return {"rows": int(mine), "seconds": ended - started, "printed": done.stdout.strip(),
            "reader_median_before_ms": reader.median_before(started) * 1000,
            "reader_longest_ms": max(waits) * 1000 if waits else float("nan"),
            "reader_answers_during": len(waits)}


def replace(stack, reader, old, path):
    """Replaces `old` by the file at `path` with the CLI while the reader reads; returns what it
    cost and the new batch."""
    before = totals(stack.db)
    mine = int(sql(stack.db, f"SELECT count(*) FROM prices_by_batch WHERE batch_id = {old}"))
    time.sleep(2)  # the reader's baseline
    started = time.monotonic()
    done = subprocess.run([f"{RELEASE}/ingest", "submit", "--replaces", str(old), path],
                          env=stack.env, capture_output=True, text=True)
    ended = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError("ingest submit --replaces failed: " + done.stderr)
    new = int(sql(stack.db, f"SELECT id FROM batches WHERE replaces = {old}"))
    came = int(sql(stack.db, f"SELECT count(*) FROM prices_by_batch WHERE batch_id = {new}"))
    after = totals(stack.db)
    if after[0] != before[0] - mine + came:
        raise RuntimeError(f"prices holds {after[0]} rows, expected {before[0] - mine + came}")
    status = bench.get_json(f"{stack.base}/batches/{new}")
    waits = reader.during(started, ended)
    printed = [line for line in done.stdout.splitlines() if "replaced batch" in line]
    return new, {"rows": mine, "seconds": ended - started, "printed": " ".join(printed),
                 "commit_seconds": status["commit_seconds"],
                 "reader_median_before_ms": reader.median_before(started) * 1000,
                 "reader_longest_ms": max(waits) * 1000 if waits else float("nan"),
                 "reader_answers_during": len(waits)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench-retract"))
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    turn = open(os.path.join(tempfile.gettempdir(), "ingest-tests.services.lock"), "a")
    fcntl.flock(turn, fcntl.LOCK_SH)
    data = os.path.join(ROOT, "data", "ratestask")
    path = os.path.join(args.out, f"rates-{args.rows}.csv")
    if not os.path.exists(path):
        print(f"bench-retract: generating {args.rows:,} rows", flush=True)
        bench.generate_rates(args.rows, 7, f"{data}/ports.csv", path + ".tmp")
        os.rename(path + ".tmp", path)
    with open(path) as f:
        f.readline()
        orig, dest, day, _ = f.readline().strip().split(",")
    question = (f"SELECT count(*) FROM prices WHERE orig_code = '{orig}' "
                f"AND dest_code = '{dest}' AND day = '{day}'")

    # No merge by itself: this script merges when it wants to.
    stack = bench.Stack("bench_retract", 18591, args.workers, args.out, "retract.log",
                        INGEST_PARTITIONS_MAX="1000000", INGEST_MERGE_MAX_BYTES=str(1 << 40))
    reader = None
    try:
        print(f"bench-retract: loading {args.rows:,} rows", flush=True)
        own = submit(stack, path)
        reader = Reader(stack.db, question)
        reader.start()
        print("bench-retract: retracting it (its own partition)", flush=True)
        results = {"own partition": retract(stack, reader, own)}
        print(f"bench-retract: {results['own partition']}", flush=True)

        print(f"bench-retract: loading {args.rows:,} rows again, then replacing them",
              flush=True)
        again = submit(stack, path)
        plain_commit = bench.get_json(f"{stack.base}/batches/{again}")["commit_seconds"]
        merged, results["replaced"] = replace(stack, reader, again, path)
        results["replaced"]["plain_commit_seconds"] = plain_commit
        print(f"bench-retract: {results['replaced']}", flush=True)

        print("bench-retract: loading the sample, merging it with the replacement", flush=True)
        submit(stack, os.path.join(data, "prices.csv"))
        started = time.monotonic()
        subprocess.run([f"{RELEASE}/ingest-coordinator", "--partitions-max", "1", "merge"],
                       env=stack.env, check=True, capture_output=True, cwd=stack.scratch)
        merge_seconds = time.monotonic() - started
        partitions = sql(stack.db, "SELECT count(*) FROM pg_inherits "
                                   "WHERE inhparent = 'prices_by_batch'::regclass")
        own_table = sql(stack.db, f"SELECT to_regclass('price_batches.batch_{merged}')")
        if partitions != "1" or own_table:
            raise RuntimeError(f"not merged: {partitions} partitions, {own_table!r}")
        print(f"bench-retract: merged in {merge_seconds:.1f} s; retracting the big batch",
              flush=True)
        results["merged (DELETE)"] = retract(stack, reader, merged)
        results["merge_seconds"] = merge_seconds
        print(f"bench-retract: {results['merged (DELETE)']}", flush=True)
    finally:
        if reader is not None:
            reader.stop()
        stack.stop()

    print(f"\nretract of a {args.rows:,}-row batch, {args.workers} workers, "
          f"{os.cpu_count()} cores:")
    print(f"{'case':<18}{'retract s':>11}{'reader median ms':>18}{'reader longest ms':>19}"
          f"{'answers during':>16}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(results, rows=args.rows, workers=args.workers), f, indent=2)
    cases = {case: r for case, r in results.items() if isinstance(r, dict)}
    for case, r in cases.items():
        print(f"{case:<18}{r['seconds']:>11.3f}{r['reader_median_before_ms']:>18.1f}"
              f"{r['reader_longest_ms']:>19.1f}{r['reader_answers_during']:>16}")
    for case, r in cases.items():
        print(f"{case}: {r['printed']}")
    replaced = results["replaced"]
    print(f"replaced: the replacing batch's commit took {replaced['commit_seconds']:.2f} s, "
          f"the plain commit of the batch it replaced {replaced['plain_commit_seconds']:.2f} s")


if __name__ == "__main__":
    main()
