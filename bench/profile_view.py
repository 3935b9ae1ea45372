"""Summarize py-spy collapsed stacks (`py-spy record -f raw`): the functions with the
most samples, by self time and by inclusive time, as a share of all samples.

    python -m bench.profile_view bench/results/profile-fanout-livepix-ws-1000.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if m:
            frames = [re.sub(r":\d+\)$", ")", f) for f in m.group(1).split(";")]
            stacks.append((frames, int(m.group(2))))
    return stacks


def summarize(path: Path, top: int = 25, exclude_idle: bool = True) -> str:
    stacks = load(path)
    if exclude_idle:
        # py-spy --idle is off: what remains are samples with the GIL held or running
        pass
    total = sum(n for _, n in stacks)
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        self_c[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{path.name}: {total} samples",
             "", "self %  function (file)"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in self_c.most_common(top)]
    lines += ["", "incl %  function (file)"]
    lines += [f"{100 * n / total:5.1f}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_view", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(args.path, args.top))


if __name__ == "__main__":
    main()
