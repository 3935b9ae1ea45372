"""Benchmarks of livepix: bounded, loopback-only load generators (see docs/benchmarks.md).

Each `python -m bench.<name>` starts its own redis-server and `livepix api` / `livepix
worker` processes on free 127.0.0.1 ports (the way tests/conftest.py does), drives them
from separate client processes for a bounded time, prints a table, writes
`bench/results/<name>.json` and, unless `--no-plot`, `docs/bench-<name>*.png`; then it
stops every process it started.
"""
