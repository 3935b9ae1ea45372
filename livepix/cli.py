"""The `livepix` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from .config import ConfigError, Settings, env_help, load_settings
from .wire import Queue, TaskType


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livepix",
        description="Real-time AI image tasks: live progress over WebSocket and SSE.",
        epilog=(
            "environment variables of the service (also read from a .env file):\n"
            + env_help()
            + "\n\nof the client commands (submit, watch, status, result, cancel):\n"
            "  LIVEPIX_URL                  the service (http://127.0.0.1:8000)\n"
            "  LIVEPIX_API_KEY              an API key, when the service has LIVEPIX_API_KEYS\n\n"
            "exit codes of watch / submit --watch: 0 succeeded, 1 failed, 2 usage, 3 cancelled,\n"
            "4 not found, 5 unreachable, 130 interrupted (the task goes on)"
        ),
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

    submit = sub.add_parser("submit", help="submit a task to a running service")
    submit.add_argument("task_type", choices=[t.value for t in TaskType])
    submit.add_argument("--prompt")
    submit.add_argument("--image", metavar="FILE", help="the input image (the face, for face_swap)")
    submit.add_argument("--target", metavar="FILE", help="face_swap: the picture whose faces are replaced")
    submit.add_argument("--mask", metavar="FILE", help="object_removal: white where the object is")
    submit.add_argument("--param", action="append", default=[], metavar="K=V", help="a parameter (repeatable)")
    submit.add_argument("--watch", action="store_true", help="then watch it to the end")
    _watch_args(submit)

    watch = sub.add_parser("watch", help="watch a task's live progress; save its result")
    watch.add_argument("task_id")
    watch.add_argument("--since", type=int, default=0, help="resume after this seq")
    watch.add_argument("--cancel-on-exit", action="store_true", help="Ctrl-C cancels the task")
    _watch_args(watch)

    for name, text in (("status", "a task's status"), ("cancel", "cancel a task")):
        command = sub.add_parser(name, help=text)
        command.add_argument("task_id")
        _client_args(command)
    result = sub.add_parser("result", help="save a finished task's image")
    result.add_argument("task_id")
    result.add_argument("-o", "--output", metavar="FILE", help="where to save it (<id>.png)")
    _client_args(result)
    return parser


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("LIVEPIX_URL", "http://127.0.0.1:8000"),
                        help="the service (LIVEPIX_URL, http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("LIVEPIX_API_KEY"), help="(LIVEPIX_API_KEY)")


def _watch_args(parser: argparse.ArgumentParser) -> None:
    _client_args(parser)
    parser.add_argument("--transport", choices=("sse", "ws"), default="sse")
    parser.add_argument("--json", action="store_true", help="print the raw events as NDJSON")
    parser.add_argument("-o", "--output", metavar="FILE", help="where to save the result (<id>.png)")


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


def run_api(settings: Settings) -> int:
    from app.server import run

    return run(settings)


def run_worker(settings: Settings, queues: str, threads: int | None) -> int:
    from actors.worker import WorkerProcess

    try:
        chosen = [Queue(q.strip()) for q in queues.split(",") if q.strip()]
    except ValueError:
        print(f"livepix: --queues takes gpu, cpu or gpu,cpu, not {queues!r}", file=sys.stderr)
        return 2
    WorkerProcess(settings, chosen, threads).run()
    return 0


CLIENT_COMMANDS = ("submit", "watch", "status", "result", "cancel")


def run_client(args: argparse.Namespace) -> int:
    from . import commands  # the SDK and rich: only for the client commands

    return commands.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client(args)
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
