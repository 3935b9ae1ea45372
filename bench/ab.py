"""A/B experiments on the fan-out hot path, measured in the same run.

Copies this source tree into a temporary directory once per variant, applies each
variant's small patch there (app/ in the repository is never touched), then runs
`bench.fanout` with one api process per tree, the runs interleaved (--repeat rounds),
so that every ratio comes from the same minutes of the same machine. A variant whose
patch no longer applies (the code moved on) is reported and skipped.

Variants:
  base        the tree as it is
  ws-timeout  app/streams.py task_ws: `async with asyncio.timeout(...)` instead of
              `asyncio.wait_for(websocket.send_text(...))` (no Task per message)
  ws-plain    the same send with no per-send timeout at all (the bound of that change;
              a stall would then need another guard, e.g. a periodic sweep)
  sse-lean    app/streams.py events_sse: a bare ASGI streaming response instead of
              sse-starlette's EventSourceResponse (no task group, no anyio cancel
              scope per send; no keepalive comments: an experiment, not a fix)
  gc-frozen   app/main.py: gc.freeze() once the app is built and gen-0 threshold
              raised to 50,000 (fewer, cheaper collections: a diagnostic of how much
              of the tail latency is the cyclic GC walking every connection's objects)
  combined    ws-timeout + sse-lean + gc-frozen

With --submit, the submit path instead (bench.taskpath's closed-loop submit clients,
the queue emptied between runs so that every variant sees the same depth):
  base             the tree as it is
  inline-validate  app/routes.py submit: validate_task(...) on the event loop instead of
                   anyio.to_thread.run_sync (a 32x32 PNG validates in microseconds;
                   the thread hop costs more)
  loop-enqueue     app/tasks.py TaskService.submit: broker.enqueue(message) called on the
                   event loop (one blocking Redis round trip) instead of in a thread:
                   the bound of an async enqueue or of enqueueing inside the submit script
  no-threads       both
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import DOCS, RESULTS, ROOT, save

WAIT_FOR = """                await asyncio.wait_for(
                    websocket.send_text(shape(frame, inline, websocket).text), SEND_TIMEOUT_S
                )"""

LEAN_SSE = '''

class _LeanSSE:
    """Experiment: a bare ASGI SSE response (no anyio task group, no per-send cancel scope)."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self.body = body

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]})
        main = asyncio.current_task()

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if main is not None:
                main.cancel()

        watcher = asyncio.ensure_future(disconnect())
        try:
            async for chunk in self.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            pass
        finally:
            watcher.cancel()
'''


def _ws_timeout(src: str) -> str:
    if WAIT_FOR not in src:
        raise ValueError("task_ws no longer sends with asyncio.wait_for(...)")
    return src.replace(WAIT_FOR, """                async with asyncio.timeout(SEND_TIMEOUT_S):
                    await websocket.send_text(shape(frame, inline, websocket).text)""")


def _ws_plain(src: str) -> str:
    if WAIT_FOR not in src:
        raise ValueError("task_ws no longer sends with asyncio.wait_for(...)")
    return src.replace(WAIT_FOR, """                await websocket.send_text(shape(frame, inline, websocket).text)""")


def _sse_lean(src: str) -> str:
    start = src.find("    return EventSourceResponse(\n        stream(),")
    if start < 0:
        raise ValueError("events_sse no longer returns EventSourceResponse(stream(), ...)")
    end = src.index(")\n", src.index("shutdown_grace_period", start)) + 2
    return src[:start] + "    return _LeanSSE(stream())\n" + src[end:] + LEAN_SSE


def _gc_frozen(src: str) -> str:
    anchor = "from __future__ import annotations\n"
    if anchor not in src:
        raise ValueError("app/main.py has no __future__ import to anchor on")
    return src.replace(anchor, anchor + "\nimport gc\n\ngc.freeze()\ngc.set_threshold(50_000, 20, 100)\n", 1)


VARIANTS = {
    "base": (None, ("ws", "sse")),
    "ws-timeout": (_ws_timeout, ("ws",)),
    "ws-plain": (_ws_plain, ("ws",)),
    "sse-lean": (_sse_lean, ("sse",)),
    "gc-frozen": (_gc_frozen, ("ws", "sse")),
    "combined": (None, ("ws", "sse")),
}
TARGET = {"gc-frozen": "app/main.py"}
COMBINED = {"app/streams.py": (_ws_timeout, _sse_lean), "app/main.py": (_gc_frozen,)}


def _inline_validate(src: str) -> str:
    old = "task = await anyio.to_thread.run_sync(validate_task, payload, limits)"
    if old not in src:
        raise ValueError("routes.submit no longer validates in a thread")
    return src.replace(old, "task = validate_task(payload, limits)")


def _loop_enqueue(src: str) -> str:
    old = "await anyio.to_thread.run_sync(self.broker.enqueue, message)"
    if old not in src:
        raise ValueError("TaskService.submit no longer enqueues in a thread")
    return src.replace(old, "self.broker.enqueue(message)")


SUBMIT_VARIANTS: dict[str, dict[str, tuple[Any, ...]]] = {
    "base": {},
    "inline-validate": {"app/routes.py": (_inline_validate,)},
    "loop-enqueue": {"app/tasks.py": (_loop_enqueue,)},
    "no-threads": {"app/routes.py": (_inline_validate,), "app/tasks.py": (_loop_enqueue,)},
}


def make_trees(root: Path, names: list[str], table: dict[str, dict[str, tuple[Any, ...]]] | None = None) -> dict[str, Path]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [p for p in files.decode().split("\0") if p and (ROOT / p).is_file()]
    trees = {}
    for name in names:
        tree = root / name
        for rel in paths:
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest)
        if table is not None:
            patches = table[name]
        else:
            patch = VARIANTS[name][0]
            patches = COMBINED if name == "combined" else {TARGET.get(name, "app/streams.py"): (patch,)} if patch else {}
        try:
            for rel, fns in patches.items():
                text = (tree / rel).read_text()
                for fn in fns:
                    text = fn(text)
                (tree / rel).write_text(text)
        except ValueError as exc:
            print(f"variant {name} skipped: {exc}", file=sys.stderr)
            continue
        trees[name] = tree
    return trees


def plot(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    labels, values, spreads = [], [], []
    for kind, rows in result["runs"].items():
        by: dict[str, list[float]] = {}
        for r in rows:
            by.setdefault(r["api"], []).append(r["deliveries_per_cpu_s"])
        for api, vs in by.items():
            vs.sort()
            labels.append(f"{kind}\n{api}")
            values.append(vs[len(vs) // 2])
            spreads.append((vs[len(vs) // 2] - vs[0], vs[-1] - vs[len(vs) // 2]))
    ax.bar(labels, values, yerr=list(zip(*spreads)) if spreads else None, capsize=4,
           color=["#999" if "base" in x else "#48c" for x in labels])
    ax.axhline(40000, color="grey", ls="--", lw=0.7)
    ax.axhline(30000, color="grey", ls=":", lw=0.7)
    ax.set_ylabel("deliveries per api CPU-second\n(median, min-max of the rounds)")
    ax.set_title(f"A/B on the hot path, {result['watchers']} watchers, same run")
    fig.tight_layout()
    path = DOCS / "bench-ab.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def run_submit(args: argparse.Namespace) -> dict[str, Any]:
    from .common import loadavg, raise_nofile, table
    from .stack import Stack
    from .taskpath import SUBMIT_COLUMNS, submit_throughput

    raise_nofile()
    rows = []
    with tempfile.TemporaryDirectory(prefix="livepix-ab-") as tmp:
        trees = make_trees(Path(tmp), list(SUBMIT_VARIANTS), SUBMIT_VARIANTS)
        with Stack() as stack:
            stack.start_redis()
            apis = []
            for name, tree in trees.items():
                url, api = stack.add_api(src=str(tree))
                apis.append((name, api, int(url.rsplit(":", 1)[1])))
            client = stack.client()
            for _ in range(args.repeat):
                for name, api, port in apis:
                    client.flushdb()
                    row = submit_throughput(stack, api, port, args.submit_connections, args.seconds)
                    row["api"] = name
                    rows.append(row)
                    print(table([row], ["api", *SUBMIT_COLUMNS]), flush=True)
            client.close()
    return {"args": vars(args), "rows": rows, "loadavg_at_end": loadavg()}


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """RSS per idle watcher of each variant tree (fresh api per tree and transport)."""
    from .common import raise_nofile, table
    from .idle import COLUMNS, run_kind

    raise_nofile()
    rows = []
    names = [n for n in args.variants if n in ("base", "sse-lean", "combined")]
    with tempfile.TemporaryDirectory(prefix="livepix-ab-") as tmp:
        trees = make_trees(Path(tmp), names)
        for kind in ("ws", "sse"):
            for name, tree in trees.items():
                if kind not in VARIANTS[name][1]:
                    continue
                ns = argparse.Namespace(levels=[args.idle_watchers], tasks=100, idle_seconds=3.0, settle=2.0,
                                        concurrency=50, max_seconds=600, api_src=str(tree))
                for row in run_kind(kind, ns):
                    row["api"] = name
                    rows.append(row)
                    print(table([row], ["api", *COLUMNS]), flush=True)
    return {"args": vars(args), "rows": rows}


def plot_submit(result: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in result["rows"]:
        by.setdefault(r["api"], []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(by)
    med = [sorted(x["submits_per_s"] for x in by[n])[len(by[n]) // 2] for n in names]
    cpu = [sorted(x["us_cpu_per_submit"] for x in by[n])[len(by[n]) // 2] for n in names]
    ax.bar(names, med, color=["#999" if n == "base" else "#48c" for n in names])
    for i, (m, c) in enumerate(zip(med, cpu)):
        ax.annotate(f"{m:.0f}/s\n{c:.0f} us CPU", (i, m), ha="center", va="bottom", fontsize=8)
    ax.axhline(1500, color="grey", ls="--", lw=0.7)
    ax.set_ylabel("accepted submits/s (median round)")
    ax.set_title(f"Submit path A/B, {result['args']['submit_connections']} connections, same run")
    fig.tight_layout()
    path = DOCS / "bench-ab-submit.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--submit", action="store_true", help="A/B the submit path instead")
    parser.add_argument("--idle", action="store_true", help="A/B RSS per idle watcher instead (base, sse-lean, combined)")
    parser.add_argument("--idle-watchers", type=int, default=2000)
    parser.add_argument("--submit-connections", type=int, default=16)
    parser.add_argument("--out", default=None, help="results name (ab, or ab-submit with --submit)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.submit:
        args.out = args.out or "ab-submit"
        result = run_submit(args)
        save(args.out, result)
        if not args.no_plot:
            print("plots:", *plot_submit(result))
        return
    if args.idle:
        args.out = args.out or "ab-idle"
        save(args.out, run_idle(args))
        return
    args.out = args.out or "ab"
    from . import fanout

    result: dict[str, Any] = {"args": vars(args), "watchers": args.watchers, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="livepix-ab-") as tmp:
        trees = make_trees(Path(tmp), args.variants)
        for kind in ("ws", "sse"):
            names = [n for n in trees if kind in VARIANTS[n][1]]
            if len(names) < 2:
                continue
            print(f"\n== {kind}: {', '.join(names)}", flush=True)
            out = f"{args.out}-{kind}"
            fanout.main(["--watchers", str(args.watchers), "--transports", kind, "--rate", str(args.rate),
                         "--seconds", str(args.seconds), "--repeat", str(args.repeat), "--no-plot",
                         "--api-src", ",".join(str(trees[n]) for n in names), "--out", out])
            import json

            result["runs"][kind] = json.loads((RESULTS / f"{out}.json").read_text())["rows"]
    save(args.out, result)
    if not args.no_plot:
        print("plots:", *plot(result))


if __name__ == "__main__":
    from .common import deadline

    with deadline(2400, "bench.ab"):
        main()
