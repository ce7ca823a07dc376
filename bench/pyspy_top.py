"""Summarise ``py-spy record -f raw`` output: the frames most samples were in (self) and under (inclusive).

    .venv/bin/python bench/pyspy_top.py out/*.txt [--top 25]

Several files (say, every gunicorn worker of the gateway) are added up as one profile.
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for path in args.files:
        with open(path) as fh:
            for line in fh:
                stack, _, count = line.rstrip().rpartition(" ")
                if not count.isdigit():
                    continue
                frames = stack.split(";")
                total += int(count)
                own[frames[-1]] += int(count)
                for frame in set(frames):
                    under[frame] += int(count)
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", under)):
        print(f"{title}:")
        for frame, count in counter.most_common(args.top):
            print(f"  {100 * count / max(total, 1):5.1f}%  {frame}")


if __name__ == "__main__":
    main()
