"""A/B of two source trees in one run: a git revision (`--base`, default HEAD) against
the working tree (or `--head REV`), measured the same minutes on the same machine.

Each tree is exported to a temporary directory (`git archive`; the working tree is
used in place) and runs its own `livepix api` from there, against the same Redis, the
same load generators and the same publisher of this checkout:
  --fanout   bench.fanout with both apis, runs interleaved (--repeat rounds): deliveries
             per api CPU-second and latency, WebSocket and SSE
  --idle     bench.idle for each tree: RSS per idle connection, WebSocket and SSE
  --submit   bench.taskpath's closed-loop submit clients for each tree, interleaved,
             the database emptied between runs: submits/s and api CPU per submit
  --asgi     bench/submit_asgi.py for each tree, alternating (--repeat processes each):
             the app's own CPU per submit, in-process, without the HTTP server and the
             clients (far less noise than --submit; each process's best round)
Without a flag, --fanout and --idle. The summary gives each measure's median per
tree and the ratio head/base.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from .common import RESULTS, ROOT, save, table


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` under `into/<rev>`."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True).stdout
    tree = into / rev.replace("/", "_")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def trees(args: argparse.Namespace, tmp: Path) -> dict[str, str]:
    base = export(args.base, tmp)
    head = str(export(args.head, tmp)) if args.head else str(ROOT)
    return {"base": str(base), "head": head}


def run_fanout(args: argparse.Namespace, srcs: dict[str, str]) -> list[dict[str, Any]]:
    from . import fanout

    out = f"{args.out}-fanout"
    fanout.main(["--watchers", str(args.watchers), "--transports", "ws,sse", "--rate", str(args.rate),
                 "--seconds", str(args.seconds), "--repeat", str(args.repeat), "--no-plot",
                 "--api-src", ",".join(srcs.values()), "--out", out])
    rows: list[dict[str, Any]] = json.loads((RESULTS / f"{out}.json").read_text())["rows"]
    names = {Path(src).name: name for name, src in srcs.items()}
    for row in rows:
        row["tree"] = names[row["api"]]
    return rows


def run_idle(args: argparse.Namespace, srcs: dict[str, str]) -> list[dict[str, Any]]:
    from .idle import COLUMNS, run_kind

    rows = []
    for _ in range(args.repeat):
        for kind in ("ws", "sse"):
            for name, src in srcs.items():
                ns = argparse.Namespace(levels=[args.idle_watchers], tasks=100, idle_seconds=3.0, settle=2.0,
                                        concurrency=50, max_seconds=600, api_src=src)
                for row in run_kind(kind, ns):
                    row["tree"] = name
                    rows.append(row)
                    print(table([row], ["tree", *COLUMNS]), flush=True)
    return rows


def run_submit(args: argparse.Namespace, srcs: dict[str, str]) -> list[dict[str, Any]]:
    from .common import raise_nofile
    from .stack import Stack
    from .taskpath import SUBMIT_COLUMNS, submit_throughput

    raise_nofile()
    rows = []
    with Stack() as stack:
        stack.start_redis()
        apis = []
        for name, src in srcs.items():
            url, api = stack.add_api(src=src)
            apis.append((name, api, int(url.rsplit(":", 1)[1])))
        client = stack.client()
        for _ in range(args.repeat):
            for name, api, port in apis:
                client.flushdb()
                row = submit_throughput(stack, api, port, args.submit_connections, args.seconds)
                row["tree"] = name
                rows.append(row)
                print(table([row], ["tree", *SUBMIT_COLUMNS]), flush=True)
        client.close()
    return rows


def run_asgi(args: argparse.Namespace, srcs: dict[str, str]) -> list[dict[str, Any]]:
    import sys

    from livepix.processes import RedisServer

    from .taskpath import tiny_task

    rows = []
    with tempfile.TemporaryDirectory(prefix="livepix-ab-redis-") as tmp:
        body = Path(tmp) / "submit.json"
        body.write_text(json.dumps(tiny_task()))
        server = RedisServer(Path(tmp) / "redis", appendonly=False).start()
        client = server.client()
        try:
            for _ in range(args.repeat):
                for name, src in srcs.items():
                    client.flushdb()
                    out = subprocess.run(
                        [sys.executable, str(ROOT / "bench" / "submit_asgi.py"), "--src", src,
                         "--redis-url", server.url(), "--body-file", str(body)],
                        capture_output=True, text=True, check=True, timeout=600,
                    ).stdout
                    rounds = json.loads(out.strip().splitlines()[-1])["us_cpu_per_submit"]
                    row = {"tree": name, "us_cpu_per_submit": min(rounds), "rounds": rounds}
                    rows.append(row)
                    print(table([row], ["tree", "us_cpu_per_submit", "rounds"]), flush=True)
        finally:
            client.close()
            server.stop()
    return rows


MEASURES = {
    "fanout": [("deliveries_per_cpu_s", "higher"), ("p99_ms", "lower")],
    "idle": [("kb_per_conn", "lower")],
    "submit": [("submits_per_s", "higher"), ("us_cpu_per_submit", "lower")],
    "asgi": [("us_cpu_per_submit", "lower")],
}


def summary(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per scenario, transport and measure: the median of each tree's rounds, head/base."""
    out = []
    for scenario, rows in results.items():
        for kind in sorted({r.get("kind", "-") for r in rows}):
            for measure, better in MEASURES[scenario]:
                med = {}
                for tree in ("base", "head"):
                    values = [r[measure] for r in rows if r["tree"] == tree and r.get("kind", "-") == kind]
                    med[tree] = statistics.median(values) if values else float("nan")
                out.append({"scenario": scenario, "kind": kind, "measure": measure, "better": better,
                            "base": med["base"], "head": med["head"],
                            "head_over_base": round(med["head"] / med["base"], 3) if med["base"] else float("nan")})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the git revision to compare against (HEAD)")
    parser.add_argument("--head", default=None, help="a git revision instead of the working tree")
    parser.add_argument("--fanout", action="store_true")
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--submit", action="store_true")
    parser.add_argument("--asgi", action="store_true")
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle-watchers", type=int, default=2000)
    parser.add_argument("--submit-connections", type=int, default=16)
    parser.add_argument("--out", default="ab")
    args = parser.parse_args(argv)
    if not (args.fanout or args.idle or args.submit or args.asgi):
        args.fanout = args.idle = True
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="livepix-ab-") as tmp:
        srcs = trees(args, Path(tmp))
        if args.fanout:
            results["fanout"] = run_fanout(args, srcs)
        if args.idle:
            results["idle"] = run_idle(args, srcs)
        if args.submit:
            results["submit"] = run_submit(args, srcs)
        if args.asgi:
            results["asgi"] = run_asgi(args, srcs)
    rows = summary(results)
    print()
    print(table(rows, ["scenario", "kind", "measure", "better", "base", "head", "head_over_base"]))
    print("results:", save(args.out, {"args": vars(args), "summary": rows, "runs": results}))


if __name__ == "__main__":
    from .common import deadline

    with deadline(3600, "bench.ab"):
        main()
