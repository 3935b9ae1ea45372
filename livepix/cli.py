"""The `livepix` command."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import replace

from .config import ConfigError, Settings, env_help, load_settings
from .wire import Queue

WS_MAX_SIZE_BYTES = 64 * 1024
GRACEFUL_SHUTDOWN_S = 5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livepix",
        description="Real-time AI image tasks: live progress over WebSocket and SSE.",
        epilog="environment variables (also read from a .env file):\n" + env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    serve = sub.add_parser("serve", help="run everything: embedded Redis, api, gpu and cpu workers")
    _bind_args(serve)

    api = sub.add_parser("api", help="run the api alone, against REDIS_URL")
    _bind_args(api)

    worker = sub.add_parser("worker", help="run a worker alone, against REDIS_URL")
    worker.add_argument("--queues", default="gpu,cpu", help="gpu, cpu or gpu,cpu (default gpu,cpu)")
    worker.add_argument("--threads", type=int, default=None, help="tasks run at once")

    models = sub.add_parser("models", help="list the configured models, or fetch them ahead of time")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="action")
    listing = models_sub.add_parser("list", help="what is configured and present")
    listing.add_argument("--check", action="store_true", help="also load each present model")
    models_sub.add_parser("pull", help="fetch the configured models into LIVEPIX_DATA_DIR")
    return parser


def _bind_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (LIVEPIX_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (LIVEPIX_PORT)")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    if getattr(args, "host", None):
        settings = replace(settings, host=args.host)
    if getattr(args, "port", None):
        settings = replace(settings, port=args.port)
    return settings


class RedactTokens(logging.Filter):
    """Keep `?token=` values (API keys or stream tokens) out of uvicorn's logs."""

    _TOKEN = re.compile(r"(token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def run_api(settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws_max_size=WS_MAX_SIZE_BYTES,
        ws_per_message_deflate=False,  # small messages: deflate costs more than it saves
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_level=settings.log_level,
        access_log=False,
    )
    server = uvicorn.Server(config)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactTokens())
    server.run()
    return 0


def run_worker(settings: Settings, queues: str, threads: int | None) -> int:
    from actors.worker import WorkerProcess

    try:
        chosen = [Queue(q.strip()) for q in queues.split(",") if q.strip()]
    except ValueError:
        print(f"livepix: --queues takes gpu, cpu or gpu,cpu, not {queues!r}", file=sys.stderr)
        return 2
    WorkerProcess(settings, chosen, threads).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"livepix: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if args.command == "serve":
        from .serve import serve

        return serve(settings)
    if args.command == "models":
        from actors.models import list_models, pull_models

        if args.models_command == "pull":
            return pull_models(settings)
        return list_models(settings, args.check)
    if not settings.redis_url:
        print(f"livepix {args.command}: set REDIS_URL (or use `livepix serve`)", file=sys.stderr)
        return 2
    if args.command == "api":
        return run_api(settings)
    return run_worker(settings, args.queues, args.threads)
