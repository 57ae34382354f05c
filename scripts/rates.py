#!/usr/bin/env python3
"""Generated rates files and their checksums, for the chaos run (and the benchmark).

  rates.py generate ROWS SEED PORTS_CSV OUT   write ROWS deterministic prices over the real port
                                              codes (orig_code,dest_code,day,price)
  rates.py checksum FILE                      per day: day,count,sum(price), sorted by day
  rates.py judge EXPECTED ACTUAL              compare two checksum files; print
                                              lost=N duplicated=N differing_days=N, exit 1 if any

The checksum is what the chaos run judges `prices` by: a row lost or loaded twice changes a
day's count, a row changed changes its sum.
"""

import csv
import sys


def generate(rows, seed, ports_csv, out):
    with open(ports_csv, newline="") as f:
        codes = [row[0] for row in csv.reader(f)][1:]
    n = len(codes)
    mask = (1 << 64) - 1
    with open(out, "w", buffering=1 << 20) as f:
        f.write("orig_code,dest_code,day,price\n")
        lines = []
        for i in range(rows):
            x = (i * 6364136223846793005 + seed) & mask
            orig = codes[x % n]
            dest = codes[(x >> 17) % n]
            day = 1 + (x >> 33) % 28
            month = 1 + (x >> 41) % 12
            price = (x >> 23) % 5000
            lines.append(f"{orig},{dest},2016-{month:02d}-{day:02d},{price}\n")
            if len(lines) == 100_000:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))


def checksum(path):
    days = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        day_at, price_at = header.index("day"), header.index("price")
        for row in reader:
            entry = days.setdefault(row[day_at], [0, 0])
            entry[0] += 1
            entry[1] += int(row[price_at])
    for day in sorted(days):
        print(f"{day},{days[day][0]},{days[day][1]}")


def read_checksum(path):
    with open(path) as f:
        return {
            day: (int(count), int(total))
            for day, count, total in (line.strip().split(",") for line in f if line.strip())
        }


def judge(expected_path, actual_path):
    expected, actual = read_checksum(expected_path), read_checksum(actual_path)
    lost = duplicated = differing = 0
    for day in sorted(set(expected) | set(actual)):
        want, got = expected.get(day, (0, 0)), actual.get(day, (0, 0))
        lost += max(0, want[0] - got[0])
        duplicated += max(0, got[0] - want[0])
        differing += want != got
    print(f"lost={lost} duplicated={duplicated} differing_days={differing}")
    return 0 if lost == duplicated == differing == 0 else 1


def main(argv):
    if len(argv) == 6 and argv[1] == "generate":
        generate(int(argv[2]), int(argv[3]), argv[4], argv[5])
        return 0
    if len(argv) == 3 and argv[1] == "checksum":
        checksum(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "judge":
        return judge(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
