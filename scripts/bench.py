#!/usr/bin/env python3
"""The benchmark: this project and the tools a data team would otherwise pick, on the same rows,
in the same run, on this machine's PostgreSQL and RabbitMQ. Run it through scripts/bench.sh.

Methods (each on a fresh table, after TRUNCATE and CHECKPOINT; median of --runs):
  psql \\copy      psql's \\copy into the published ratestask `prices` (two FKs to `ports`)
  raw 2x \\copy    two parallel \\copy streams into a plain table: no FK, no index (the raw limit)
  by hand         the raw limit, then CREATE INDEX, then both ADD FOREIGN KEY (the best a person
                  gets to an indexed table with the FKs enforced, step by step)
  pgloader        pgloader into the published `prices` (Debian's package)
  pipeline        ingest submit → committed, coordinator + W workers (release binaries); phases
                  from the ledger and the status; peak RSS of every process
  pipeline, visible first
                  the same with INGEST_VISIBLE_BEFORE_INDEX: visible once the rows are loaded
                  and the foreign keys validated, indexed afterwards (CREATE INDEX CONCURRENTLY)

Then, readers as batches pile up (--batches, default 300): that many small batches through the
pipeline with merging off, the ratestask rates query's planning and execution time over one
partition per batch, then `ingest-coordinator merge` down to --partitions-max and the same query
again (median of 7 EXPLAIN ANALYZE each).

Prints one table, and writes results.json and chart.png into --out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"]
RELEASE = os.path.join(ROOT, "target", "release")


def generate_rates(rows, seed, ports_csv, out):
    """Writes a generated rates file with the testkit's `rates` binary (the generator the tests
    and the chaos run use; built with the release binaries by `cargo build --release --bins`)."""
    rates = os.path.join(RELEASE, "rates")
    if not os.access(rates, os.X_OK):
        sys.exit(f"{rates} is missing: cargo build --release --locked -p ingest-testkit --bin rates")
    subprocess.run([rates, "generate", str(rows), str(seed), ports_csv, out], check=True)


def sql(db, statement):
    return subprocess.run(PG + ["-d", db, "-c", statement], check=True,
                          capture_output=True, text=True).stdout.strip()


def fresh_db(name):
    subprocess.run(PG + ["-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                   check=True, capture_output=True)
    subprocess.run(PG + ["-d", "postgres", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True)


def timed(fn):
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def copy(db, table, path):
    subprocess.run(PG + ["-d", db, "-c", f"\\copy {table} FROM '{path}' CSV HEADER"],
                   check=True, capture_output=True)


# --- the published ratestask schema (as the exercise's dump has it) ----------------------------

def published_schema(db, data):
    fresh_db(db)
    sql(db, """
        CREATE TABLE regions (slug text PRIMARY KEY, name text NOT NULL,
                              parent_slug text REFERENCES regions (slug));
        CREATE TABLE ports (code text PRIMARY KEY, name text NOT NULL,
                            parent_slug text NOT NULL REFERENCES regions (slug));
        CREATE TABLE prices (orig_code text NOT NULL REFERENCES ports (code),
                             dest_code text NOT NULL REFERENCES ports (code),
                             day date NOT NULL, price integer NOT NULL);
        CREATE TABLE prices_raw (orig_code text NOT NULL, dest_code text NOT NULL,
                                 day date NOT NULL, price integer NOT NULL);""")
    # Regions refer to regions: load them parentless, then set the parents (one session, so
    # the temporary table lives through the three commands).
    subprocess.run(PG + ["-d", db,
                         "-c", "CREATE TEMP TABLE r (slug text, name text, parent_slug text)",
                         "-c", f"\\copy r FROM '{data}/regions.csv' CSV HEADER",
                         "-c", "INSERT INTO regions SELECT slug, name, NULL FROM r; "
                               "UPDATE regions SET parent_slug = nullif(r.parent_slug, '') "
                               "FROM r WHERE regions.slug = r.slug"],
                   check=True, capture_output=True)
    copy(db, "ports", f"{data}/ports.csv")


def reset(db, table):
    sql(db, f"TRUNCATE {table}; CHECKPOINT;")


def psql_copy(db, path):
    reset(db, "prices")
    return timed(lambda: copy(db, "prices", path))


def parallel_copy(db, table, halves):
    """One \\copy stream per half of the file, at once."""
    procs = [subprocess.Popen(PG + ["-d", db, "-c", f"\\copy {table} FROM '{half}' CSV HEADER"])
             for half in halves]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("a \\copy stream failed")


def raw_parallel(db, halves):
    reset(db, "prices_raw")
    return timed(lambda: parallel_copy(db, "prices_raw", halves))


def by_hand(db, halves):
    """The raw limit, then the index, then both foreign keys: seconds of each step."""
    sql(db, "DROP TABLE IF EXISTS prices_hand; CREATE TABLE prices_hand (LIKE prices_raw); "
            "CHECKPOINT;")

    steps = {"copy": timed(lambda: parallel_copy(db, "prices_hand", halves))}
    steps["index"] = timed(lambda: sql(
        db, "CREATE INDEX prices_hand_route_day ON prices_hand (orig_code, dest_code, day)"))
    steps["foreign keys"] = timed(lambda: sql(
        db, "ALTER TABLE prices_hand ADD FOREIGN KEY (orig_code) REFERENCES ports (code); "
            "ALTER TABLE prices_hand ADD FOREIGN KEY (dest_code) REFERENCES ports (code)"))
    steps["total"] = sum(steps.values())
    return steps


def pgloader(db, path):
    reset(db, "prices")
    command = f"""LOAD CSV FROM '{path}' (orig_code, dest_code, day, price)
    INTO postgresql://postgres@127.0.0.1:5432/{db}?prices (orig_code, dest_code, day, price)
    WITH skip header = 1, fields terminated by ',', fields optionally enclosed by '"';"""
    with tempfile.NamedTemporaryFile("w", suffix=".load", delete=False) as f:
        f.write(command)
    try:
        def run():
            done = subprocess.run(["pgloader", "--quiet", f.name], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError("pgloader failed: " + done.stderr[-400:])
        seconds = timed(run)
    finally:
        os.unlink(f.name)
    loaded = int(sql(db, "SELECT count(*) FROM prices"))
    return seconds, loaded


# --- the pipeline -----------------------------------------------------------------------------

def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


class Stack:
    """A seeded database, a coordinator and workers (release binaries) with extra INGEST_*
    settings, their logs appended to `out/log_name`; `stop()` ends the processes and removes the
    queues (the database stays for a look, and is made afresh next time)."""

    def __init__(self, db, port, workers, out, log_name, bin_dir=RELEASE, **settings):
        self.db, self.queue = db, f"ingest.bench.{db}.{os.getpid()}"
        fresh_db(db)
        # A folder to run in: a --previous build may still keep files of its own there (its
        # spool).
        self.scratch = tempfile.mkdtemp(prefix="bench-run-")
        self.env = dict(os.environ,
                        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}",
                        INGEST_QUEUE=self.queue, INGEST_LISTEN=f"127.0.0.1:{port}",
                        INGEST_URL=f"http://127.0.0.1:{port}",
                        RUST_LOG="warn", INGEST_COMMIT_POLL_MS="50",
                        INGEST_SPOOL_DIR=os.path.join(self.scratch, "spool"), **settings)
        self.env.pop("INGEST_TOKEN", None)
        self.base = self.env["INGEST_URL"]
        self.bin_dir = bin_dir
        subprocess.run([f"{bin_dir}/ingest-coordinator", "seed", "--data-dir",
                        os.path.join(ROOT, "data", "ratestask")], env=self.env, check=True,
                       capture_output=True, cwd=self.scratch)
        self.logs = open(os.path.join(out, log_name), "a")
        self.procs = [subprocess.Popen([f"{bin_dir}/ingest-coordinator"], env=self.env,
                                       stdout=self.logs, stderr=self.logs, cwd=self.scratch)]
        for n in range(workers):
            self.procs.append(subprocess.Popen(
                [f"{bin_dir}/ingest-worker"], stdout=self.logs, stderr=self.logs,
                env=dict(self.env, INGEST_WORKER_NAME=f"bench-{db}-{n}",
                         INGEST_WORKER_LISTEN="127.0.0.1:0")))
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{self.base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.1)

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", self.queue], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", self.queue + ".dead"],
                       capture_output=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.logs.close()


def pipeline(path, rows, workers, out, visible_first=False, bin_dir=RELEASE):
    stack = Stack("bench_pipeline", 18580, workers, out, "pipeline.log", bin_dir=bin_dir,
                  INGEST_VISIBLE_BEFORE_INDEX="true" if visible_first else "false")
    db, env, base, procs = stack.db, stack.env, stack.base, stack.procs
    try:
        sql(db, "CHECKPOINT")
        started = time.monotonic()
        submit = subprocess.run([f"{stack.bin_dir}/ingest", "submit", path, "--no-wait"], env=env,
                                capture_output=True, text=True)
        if submit.returncode != 0:
            raise RuntimeError("ingest submit failed: " + submit.stderr)
        uploaded = time.monotonic() - started
        batch = int(sql(db, "SELECT max(id) FROM batches"))
        steps = {}
        while True:
            status = get_json(f"{base}/batches/{batch}")
            now = time.monotonic() - started
            commit = status.get("commit")
            if commit:
                steps.setdefault(commit["step"], now)
            if status["state"] in ("committed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        visible = time.monotonic() - started
        if status["state"] != "committed":
            raise RuntimeError(f"the batch ended {status['state']}: {status.get('error')}")
        # Indexed: every part of the batch has a valid index.
        index_valid = ("SELECT bool_and(coalesce((SELECT bool_and(x.indisvalid) FROM pg_index x "
                       "WHERE x.indrelid = t.relid), false)) FROM pg_partition_tree("
                       f"to_regclass('price_batches.batch_{batch}')) t WHERE t.isleaf")
        while sql(db, index_valid) != "t":
            time.sleep(0.05)
        indexed = time.monotonic() - started
        loaded = float(sql(db, f"""SELECT extract(epoch FROM max(c.updated_at) - b.created_at)
                                   FROM batches b JOIN chunks c ON c.batch_id = b.id
                                   WHERE b.id = {batch} GROUP BY b.created_at"""))
        count = int(sql(db, "SELECT count(*) FROM prices WHERE true"))
        if count != rows:
            raise RuntimeError(f"prices holds {count} rows, not {rows}")
        rss = [peak_rss_kib(proc.pid) // 1024 for proc in procs]
        # The parts' foreign keys are validated right before the attach (after their index
        # unless visible first); a step too short to be seen by the polling starts at the next.
        if visible_first:
            keys_started = steps.get("foreign_keys", steps.get("attach", loaded))
            index = indexed - visible
        else:
            keys_started = steps.get("foreign_keys", steps.get("attach", visible))
            index = max(0.0, keys_started - steps.get("index", loaded))
        return {
            "seconds": visible,
            "upload": uploaded,
            "load": loaded,
            "commit": status["commit_seconds"],
            "index": index,
            "fk validation + attach": max(0.0, visible - keys_started),
            "time to visible": visible,
            "time to indexed": indexed,
            "rss_coordinator_mib": rss[0],
            "rss_workers_mib": rss[1:],
        }
    finally:
        stack.stop()


# --- the run ----------------------------------------------------------------------------------

# The ratestask rates query: the average price per day from a port to every port of a region
# (regions nest), null on days with fewer than 3 prices.
RATES_QUERY = """
WITH RECURSIVE dest_regions AS (
    SELECT slug FROM regions WHERE slug = 'north_europe_main'
    UNION SELECT r.slug FROM regions r JOIN dest_regions d ON r.parent_slug = d.slug),
  dest_ports AS (SELECT code FROM ports WHERE parent_slug IN (SELECT slug FROM dest_regions))
SELECT d::date AS day,
       CASE WHEN count(p.price) >= 3 THEN round(avg(p.price)) END AS average_price
FROM generate_series('2016-01-01'::date, '2016-01-10'::date, '1 day') d
LEFT JOIN prices p ON p.day = d::date AND p.orig_code = 'CNSGH'
                  AND p.dest_code IN (SELECT code FROM dest_ports)
GROUP BY d ORDER BY d"""


def rates_query_ms(db):
    """Median planning and execution time of the rates query (ms), over 7 runs after one warm-up."""
    plans = []
    for _ in range(8):
        out = sql(db, "EXPLAIN (ANALYZE, FORMAT JSON) " + RATES_QUERY)
        plans.append(json.loads(out)[0])
    plans = plans[1:]
    return (median([plan["Planning Time"] for plan in plans]),
            median([plan["Execution Time"] for plan in plans]))


def partitions_bench(path, batches, rows_each, partitions_max, out):
    """`batches` small batches through the pipeline (merging off), the rates query, a merge down
    to `partitions_max`, the rates query again."""
    files = tempfile.mkdtemp(prefix="bench-batches-")
    with open(path) as f:
        header = f.readline()
        for n in range(batches):
            with open(os.path.join(files, f"batch-{n}.csv"), "w") as part:
                part.write(header)
                for _ in range(rows_each):
                    part.write(f.readline())
    stack = Stack("bench_partitions", 18581, 2, out, "partitions.log",
                  INGEST_PARTITIONS_MAX="1000000")
    db, env = stack.db, stack.env
    try:
        for n in range(batches):
            submit = subprocess.run([f"{RELEASE}/ingest", "submit",
                                     os.path.join(files, f"batch-{n}.csv")], env=env,
                                    capture_output=True, text=True)
            if submit.returncode != 0:
                raise RuntimeError("ingest submit failed: " + submit.stderr)
        stack.stop()
        count = int(sql(db, "SELECT count(*) FROM prices WHERE true"))
        if count != batches * rows_each:
            raise RuntimeError(f"prices holds {count} rows, not {batches * rows_each}")
        partitions_sql = ("SELECT count(*) FROM pg_inherits "
                          "WHERE inhparent = 'prices_by_batch'::regclass")
        before = int(sql(db, partitions_sql))
        plan_before, run_before = rates_query_ms(db)
        started = time.monotonic()
        merged = subprocess.run([f"{RELEASE}/ingest-coordinator", "--partitions-max",
                                 str(partitions_max), "merge"], env=env, capture_output=True,
                                text=True)
        if merged.returncode != 0:
            raise RuntimeError("ingest-coordinator merge failed: " + merged.stderr.strip())
        merge_seconds = time.monotonic() - started
        after = int(sql(db, partitions_sql))
        plan_after, run_after = rates_query_ms(db)
        if int(sql(db, "SELECT count(*) FROM prices WHERE true")) != count:
            raise RuntimeError("the merge changed the number of rows")
        return {"batches": batches, "rows_each": rows_each,
                "partitions_before": before, "planning_ms_before": plan_before,
                "execution_ms_before": run_before, "merge_seconds": merge_seconds,
                "partitions_after": after, "planning_ms_after": plan_after,
                "execution_ms_after": run_after}
    finally:
        if not stack.logs.closed:
            stack.stop()
        sql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        shutil.rmtree(files, ignore_errors=True)


def median(values):
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "bench"))
    parser.add_argument("--no-pgloader", action="store_true")
    parser.add_argument("--batches", type=int, default=300,
                        help="small batches for the readers' part (0: skip it)")
    parser.add_argument("--partitions-max", type=int, default=8)
    parser.add_argument("--previous", default="",
                        help="a folder with the release binaries of an earlier build: its "
                             "pipeline runs in the same rounds, as 'pipeline (previous)'")
    parser.add_argument("--skip", default="",
                        help="comma-separated baselines not to run: psql, raw, hand "
                             "(for a memory run at a size where psql \\copy takes too long)")
    args = parser.parse_args()
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(ROOT, "data", "ratestask")
    path = os.path.join(args.out, f"rates-{args.rows}.csv")
    if not os.path.exists(path):
        print(f"bench: generating {args.rows:,} rows", flush=True)
        generate_rates(args.rows, 7, f"{data}/ports.csv", path + ".tmp")
        os.rename(path + ".tmp", path)
    halves = split_in_two(path) if {"raw", "hand"} - skip else None
    db = "bench_published"
    published_schema(db, data)

    results = {"rows": args.rows, "workers": args.workers, "runs": args.runs,
               "file_bytes": os.path.getsize(path), "methods": {}}
    modes = {"pipeline": (False, RELEASE), "pipeline, visible first": (True, RELEASE)}
    if args.previous:
        previous = os.path.abspath(args.previous)
        modes["pipeline (previous)"] = (False, previous)
        modes["pipeline, visible first (previous)"] = (True, previous)
    samples = {"psql \\copy": [], "raw 2x \\copy": [], "by hand": [], "pgloader": [],
               **{mode: [] for mode in modes}}
    hand_steps, pipeline_runs = [], {mode: [] for mode in modes}
    for run in range(1, args.runs + 1):
        print(f"bench: run {run} of {args.runs}", flush=True)
        if "psql" not in skip:
            samples["psql \\copy"].append(psql_copy(db, path))
        if "raw" not in skip:
            samples["raw 2x \\copy"].append(raw_parallel(db, halves))
        if "hand" not in skip:
            steps = by_hand(db, halves)
            hand_steps.append(steps)
            samples["by hand"].append(steps["total"])
        if not args.no_pgloader:
            seconds, loaded = pgloader(db, path)
            if loaded != args.rows:
                raise RuntimeError(f"pgloader loaded {loaded} rows, not {args.rows}")
            samples["pgloader"].append(seconds)
        for mode, (visible_first, bin_dir) in modes.items():
            one = pipeline(path, args.rows, args.workers, args.out, visible_first, bin_dir)
            pipeline_runs[mode].append(one)
            samples[mode].append(one["seconds"])

    psql = median(samples["psql \\copy"])
    raw = median(samples["raw 2x \\copy"])
    print()
    print(f"{args.rows:,} rows ({results['file_bytes'] / 2**20:.0f} MiB), "
          f"median of {args.runs}, {args.workers} pipeline workers")
    print(f"{'method':<28} {'seconds':>9} {'rows/s':>12} {'vs psql':>9} {'vs raw':>8}")
    for name, values in samples.items():
        if not values:
            continue
        seconds = median(values)
        results["methods"][name] = {"seconds": seconds, "samples": values,
                                    "rows_per_second": args.rows / seconds}
        print(f"{name:<28} {seconds:>9.2f} {args.rows / seconds:>12,.0f} "
              f"{ratio(psql, seconds):>9} {ratio(raw, seconds):>8}")
    hand = ({key: median([steps[key] for steps in hand_steps]) for key in hand_steps[0]}
            if hand_steps else {})
    results["by_hand_steps"] = hand
    if hand:
        print("by hand (seconds): "
              + ", ".join(f"{key} {value:.2f}" for key, value in hand.items()))
    results["pipeline_phases"], results["peak_rss_mib"] = {}, {}
    for mode, runs in pipeline_runs.items():
        phases = {key: median([run[key] for run in runs])
                  for key in ["upload", "load", "index", "fk validation + attach", "commit",
                              "time to visible", "time to indexed"]}
        rss_coordinator = max(run["rss_coordinator_mib"] for run in runs)
        rss_workers = [max(run["rss_workers_mib"][n] for run in runs)
                       for n in range(args.workers)]
        results["pipeline_phases"][mode] = phases
        results["peak_rss_mib"][mode] = {"coordinator": rss_coordinator, "workers": rss_workers}
        print()
        print(f"{mode}, phases (seconds from the submit):")
        for key, value in phases.items():
            print(f"  {key:<24} {value:8.2f}")
        visible = phases["time to visible"]
        print(f"time to visible: {ratio(psql, visible)} faster than psql \\copy, "
              f"{ratio(raw, visible)} the raw limit; time to indexed: "
              f"{ratio(phases['time to indexed'], hand.get('total'))} the best by hand")
        print(f"peak RSS: coordinator {rss_coordinator} MiB, workers "
              + ", ".join(f"{mib} MiB" for mib in rss_workers))
    if args.batches:
        rows_each = max(1, min(1000, args.rows // args.batches))
        print(f"bench: {args.batches} batches of {rows_each} rows, then a merge", flush=True)
        readers = partitions_bench(path, args.batches, rows_each, args.partitions_max, args.out)
        results["readers"] = readers
        print(f"rates query over {readers['partitions_before']} partitions: planning "
              f"{readers['planning_ms_before']:.2f} ms, execution "
              f"{readers['execution_ms_before']:.2f} ms; merged to "
              f"{readers['partitions_after']} in {readers['merge_seconds']:.1f} s: planning "
              f"{readers['planning_ms_after']:.2f} ms, execution "
              f"{readers['execution_ms_after']:.2f} ms")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    chart(results, os.path.join(args.out, "chart.png"))
    print(f"results: {args.out}/results.json, {args.out}/chart.png")


def ratio(numerator, denominator):
    """`numerator / denominator` as "1.23x", or "-" when a side was not measured."""
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def split_in_two(path):
    """The file as two halves with a header each, for two parallel \\copy streams (made once)."""
    halves = [path + ".1", path + ".2"]
    if all(os.path.exists(half) for half in halves):
        return halves
    with open(path) as f:
        header = f.readline()
        lines = f.readlines()
    middle = len(lines) // 2
    for half, part in zip(halves, [lines[:middle], lines[middle:]]):
        with open(half, "w") as f:
            f.write(header)
            f.writelines(part)
    return halves


def chart(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is missing; no chart", file=sys.stderr)
        return
    names = list(results["methods"])
    seconds = [results["methods"][name]["seconds"] for name in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.barh(names, seconds, color=["#1a7f37" if name.startswith("pipeline") else "#8c959f"
                                          for name in names])
    ax.bar_label(bars, labels=[f"{s:.1f} s" for s in seconds], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (lower is better)")
    ax.set_title(f"{results['rows']:,} rates rows, median of {results['runs']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
