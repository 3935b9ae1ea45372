"""Where an idle watcher's memory goes: tracemalloc in a copy of the api.

Copies this source tree to a temporary directory and adds, to that copy's
app/main.py only, `tracemalloc.start()` and a SIGUSR1 handler that writes a snapshot.
Starts that api, opens --warm watchers, snapshots, opens --watchers more (WS or SSE,
one task each of --tasks), snapshots again, and prints the difference per connection
grouped by source file and by line: which code holds how many bytes per watcher.
tracemalloc sees Python-heap allocations (objects, Cython/uvloop objects, buffers), not
the kernel's socket buffers (which are not in RSS either); tracing itself makes the
process bigger and slower, so the RSS delta here reads high: use bench.idle for RSS.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from .common import loadavg, raise_nofile, save
from .push import Clients
from .stack import Stack, make_tasks

HOOK = '''
import os as _os
if _os.environ.get("LIVEPIX_BENCH_TRACEMALLOC"):
    import signal as _signal
    import tracemalloc as _tracemalloc

    _tracemalloc.start(12)

    def _dump(*_args: object) -> None:
        import gc as _gc

        _gc.collect()
        _tracemalloc.take_snapshot().dump(_os.environ["LIVEPIX_BENCH_TRACEMALLOC"] + f".{_os.getpid()}.{_dump.n}")
        _dump.n += 1

    _dump.n = 0  # type: ignore[attr-defined]
    _signal.signal(_signal.SIGUSR1, _dump)
'''


def snapshot(api: Any, base: str, index: int) -> tracemalloc.Snapshot:
    path = Path(f"{base}.{api.pid}.{index}")
    os.kill(api.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("no snapshot from the api")
        time.sleep(0.2)
    time.sleep(1.0)  # let it finish writing
    return tracemalloc.Snapshot.load(str(path))


def short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/app/", "/livepix/"):
        i = filename.find(marker)
        if i >= 0:
            return ("app/" if marker == "/app/" else "livepix/" if marker == "/livepix/" else "") + filename[i + len(marker):]
    return filename


def run_kind(kind: str, tree: Path, args: argparse.Namespace, dump_base: str) -> dict[str, Any]:
    with Stack() as stack:
        stack.start_redis()
        url, api = stack.add_api(src=str(tree), LIVEPIX_BENCH_TRACEMALLOC=dump_base)
        port = int(url.rsplit(":", 1)[1])
        tasks = make_tasks(stack.redis_url, args.tasks)
        groups = []
        try:
            warm = Clients(stack, kind, port, tasks, args.warm, 1, max_seconds=600, tag="-warm")
            groups.append(warm)
            warm.ready()
            time.sleep(1)
            rss0 = api.rss()
            before = snapshot(api, dump_base, 0)
            group = Clients(stack, kind, port, tasks, args.watchers, 2, max_seconds=600)
            groups.append(group)
            group.ready(timeout_s=300)
            time.sleep(2)
            rss1 = api.rss()
            after = snapshot(api, dump_base, 1)
        finally:
            for g in groups:
                g.stop()
    n = args.watchers
    diff_files = after.compare_to(before, "filename")
    diff_lines = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff_files)
    by_file = [{"file": short(d.traceback[0].filename), "bytes_per_conn": round(d.size_diff / n),
                "blocks_per_conn": round(d.count_diff / n, 2)} for d in diff_files[: args.top] if d.size_diff > 0]
    by_line = [{"line": f"{short(d.traceback[0].filename)}:{d.traceback[0].lineno}",
                "bytes_per_conn": round(d.size_diff / n), "blocks_per_conn": round(d.count_diff / n, 2)}
               for d in diff_lines[: args.top] if d.size_diff > 0]
    return {"kind": kind, "watchers": n, "traced_bytes_per_conn": round(total / n),
            "traced_blocks_per_conn": round(sum(d.count_diff for d in diff_files) / n, 1),
            "rss_kb_per_conn_traced_process": round((rss1 - rss0) / n / 1024, 1),
            "by_file": by_file, "by_line": by_line, "loadavg": loadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--transports", type=lambda s: s.split(","), default=["ws", "sse"])
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default="memory")
    args = parser.parse_args(argv)
    raise_nofile()
    from .ab import make_trees

    results = []
    with tempfile.TemporaryDirectory(prefix="livepix-mem-") as tmp:
        tree = make_trees(Path(tmp), ["base"])["base"]
        main_py = tree / "app" / "main.py"
        text = main_py.read_text()
        anchor = "from __future__ import annotations\n"
        main_py.write_text(text.replace(anchor, anchor + HOOK, 1))
        for kind in args.transports:
            r = run_kind(kind, tree, args, str(Path(tmp) / f"snap-{kind}"))
            results.append(r)
            print(f"\n{kind}: {r['traced_bytes_per_conn']} traced bytes and {r['traced_blocks_per_conn']} blocks "
                  f"per connection (RSS of the traced process +{r['rss_kb_per_conn_traced_process']} KB/conn)")
            print("  by file:")
            for x in r["by_file"]:
                print(f"    {x['bytes_per_conn']:>7} B  {x['blocks_per_conn']:>6} blocks  {x['file']}")
            print("  by line:")
            for x in r["by_line"]:
                print(f"    {x['bytes_per_conn']:>7} B  {x['blocks_per_conn']:>6} blocks  {x['line']}")
    print("results:", save(args.out, {"args": vars(args), "rows": results}))


if __name__ == "__main__":
    from .common import deadline

    with deadline(900, "bench.memory"):
        main()
