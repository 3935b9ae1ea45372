"""What every benchmark shares for measuring and reporting: machine facts, latency
histograms, quantiles, result files and markdown tables. The processes under test are
in `bench.stack`, the push scenario's clients in `bench.push`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import resource
import signal
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
HOST = "127.0.0.1"  # every socket of the benchmarks is on loopback


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


_BINS_PER_DECADE = 200


_MIN_EXP = -6  # 1 us


_NBINS = _BINS_PER_DECADE * 8  # up to 100 s


def hist_index(seconds: float) -> int:
    if seconds <= 1e-6:
        return 0
    i = int((math.log10(seconds) - _MIN_EXP) * _BINS_PER_DECADE)
    return i if i < _NBINS else _NBINS - 1


class Histogram:
    """Log-binned latency histogram (1.2% resolution), mergeable across processes."""

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    def add(self, seconds: float) -> None:
        i = hist_index(seconds)
        self.counts[i] = self.counts.get(i, 0) + 1

    def merge(self, other: dict[str, int] | dict[int, int] | Histogram) -> None:
        items = other.counts.items() if isinstance(other, Histogram) else other.items()
        for k, v in items:
            self.counts[int(k)] = self.counts.get(int(k), 0) + v

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float:
        total = self.n
        if total == 0:
            return float("nan")
        rank = q * (total - 1)
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                return 10 ** (_MIN_EXP + (i + 0.5) / _BINS_PER_DECADE)
        return float("nan")

    def ms(self, q: float) -> float:
        return round(self.quantile(q) * 1000, 2)


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(scrubbed(json.dumps(data, indent=1, default=str)))
    return path


def scrubbed(text: str) -> str:
    """`text` without this machine's paths (results are committed): site-packages, the
    checkout, the home folder and the temp folder become short names, so an A/B's
    `--api-src /tmp/base` is recorded as `base`. A prefix counts only as a whole path
    (`/tmp` is not replaced inside `/var/tmp` or `/tmpfoo`)."""
    for prefix, short in (
        (sysconfig.get_paths()["purelib"], "site-packages"),
        (str(ROOT), "."),
        (str(Path.home()), "~"),
        (tempfile.gettempdir(), None),  # its entries keep their own names
    ):
        if prefix.rstrip(os.sep) == "":
            continue  # a home (or temp) of "/" would swallow every path
        head = rf"(?<![\w.~/-]){re.escape(prefix)}"
        if short is None:
            text = re.sub(head + re.escape(os.sep), "", text)
        else:
            text = re.sub(head + r"(?![\w.-])", short, text)
    return text


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of `columns` of `rows`."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Abort the whole benchmark with SIGALRM past `seconds`: every run is bounded."""
    def on_alarm(*_: object) -> None:
        raise TimeoutError(f"{what} ran past its {seconds:.0f} s bound")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
