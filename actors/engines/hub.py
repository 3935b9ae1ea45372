"""Hugging Face hub models: where they are cached, whether the hub answers, and the
byte progress of their downloads, as task events.

diffusers fetches a pipeline with huggingface_hub's `snapshot_download` and passes it no
progress hook: the bytes show only in tqdm bars on the worker's stderr. `progress_of`
wraps the `snapshot_download` that diffusers calls so that it gets a `tqdm_class` whose
bars feed a `download.Progress` ("Fetching <model>: 812 MB of 4.3 GB").

The bars are plain objects, not tqdm subclasses, so huggingface_hub neither disables
them (HF_HUB_DISABLE_PROGRESS_BARS, log levels) nor draws them. Updates come from the
download threads (eight at once); an exception raised by `report` (a cancel) leaves the
download from the thread that met it, is raised again at every later update, and again
when `snapshot_download` returns, in case a library swallowed it (hf_xet ignores errors
raised in its progress callbacks, and finishes that file first).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlparse

from livepix.config import Settings

from ..errors import ModelUnavailableError, TaskCancelledError, is_out_of_memory
from .download import Progress

log = logging.getLogger(__name__)

# Where diffusers looks `snapshot_download` up when it fetches a pipeline.
DIFFUSERS_MODULE = "diffusers.pipelines.pipeline_utils"


def model_source(spec: str) -> tuple[str, bool]:
    """(what to load, whether it is a local directory) for a hub id or a path."""
    local = os.path.isdir(os.path.expanduser(spec)) or spec.startswith(("/", "./", "~"))
    return (str(Path(spec).expanduser()) if local else spec), local


def hub_cache(settings: Settings) -> Path:
    return settings.model_dir / "huggingface"


def in_hub_cache(settings: Settings, repo_id: str) -> bool:
    return (hub_cache(settings) / f"models--{repo_id.replace('/', '--')}").is_dir()


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


T = TypeVar("T")


def load_pretrained(
    load: Callable[..., T],
    source: str,
    local: bool,
    setting: str,
    what: str,
    settings: Settings,
    fetching: Callable[[str], AbstractContextManager[object]],
) -> T:
    """`load(source, **options)` of a local directory or a hub model (`model_source`),
    the value of `setting`: a hub model from the data dir, fetched into it on first use
    inside `fetching(source)` (which reports it). ModelUnavailableError, naming
    `setting`, if it cannot be had; a cancel raised while fetching goes through."""
    hint = f"set {setting} to a local directory or make the hub reachable once"
    if local and not Path(source).is_dir():
        raise ModelUnavailableError(f"{setting}={source} is not a directory")
    if not local and not in_hub_cache(settings, source) and not hub_reachable():
        # The hub client would retry for half a minute: fail now, and say why.
        raise ModelUnavailableError(
            f"the {what} {source!r} is not in the data dir and the Hugging Face hub is unreachable; {hint}"
        )
    options = {} if local else {"cache_dir": str(hub_cache(settings))}
    try:
        try:
            return load(source, local_files_only=True, **options)
        except (OSError, ValueError):
            if local:
                raise
            with fetching(source):
                return load(source, **options)
    except TaskCancelledError:
        raise
    except Exception as exc:  # hub, network, file or config errors alike
        if is_out_of_memory(exc):
            raise  # not the model's fault: the worker may free memory and retry
        raise ModelUnavailableError(
            f"the {what} {source!r} could not be loaded ({type(exc).__name__}: {str(exc)[:200]}); {hint}"
        ) from exc


class Tally:
    """The bars of one `snapshot_download` call, reported to `progress` as one count.

    huggingface_hub keeps two byte bars (bytes received, bytes written; the same for
    plain HTTP) and a bar of files; the furthest byte bar is the count to show. Its
    total only grows as each file's download starts, so the total shown is what
    `expected` returns once the snapshot knows its files (None: bytes without a total).
    """

    def __init__(self, progress: Progress, expected: Callable[[], int | None]) -> None:
        self.progress = progress
        self.bars: list[Bar] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._expected = expected
        self._total: int | None = None
        # What earlier snapshots of the same fetch counted (diffusers fetches connected
        # pipelines one after another).
        self._base_done = progress.done
        self._base_total = progress.total or 0

    def add(self, bar: Bar) -> None:
        with self.lock:
            if bar.unit == "B" and not any(b.unit == "B" for b in self.bars):
                # The first byte bar: the snapshot has cached its file list by now.
                self._total = self._expected()
            self.bars.append(bar)

    def changed(self) -> None:
        """Report the current count (throttled by `Progress`); called with `lock` held."""
        if self.error is not None:
            raise self.error
        byte_bars = [bar for bar in self.bars if bar.unit == "B"]
        done = max((bar.n for bar in byte_bars), default=0)
        if self._total is not None:
            known = max((bar.total or 0 for bar in byte_bars), default=0)
            self.progress.total = self._base_total + max(self._total, known)
        try:
            self.progress.advance(self._base_done + done - self.progress.done)
        except BaseException as exc:
            self.error = exc
            raise

    def bar_class(self) -> type[Bar]:
        tally = self

        class TallyBar(Bar):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(tally, *args, **kwargs)

        return TallyBar


class Bar:
    """The part of tqdm's interface that huggingface_hub uses, feeding a `Tally`."""

    def __init__(
        self,
        tally: Tally,
        iterable: Any = None,
        desc: str | None = None,
        total: float | None = None,
        *,
        initial: float = 0,
        unit: str = "it",
        **_: Any,
    ) -> None:
        self._tally = tally
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.n = initial or 0
        self.unit = unit
        tally.add(self)

    def update(self, n: float | None = 1) -> bool | None:
        with self._tally.lock:
            self.n += n or 0
            self._tally.changed()
        return None

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def reset(self, total: float | None = None) -> None:
        self.n = 0
        if total is not None:
            self.total = total

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    @property
    def format_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "rate": None, "unit": self.unit}


def expected_bytes(repo_id: str, options: dict[str, Any]) -> int | None:
    """The bytes a `snapshot_download(repo_id, **options)` in progress still has to fetch,
    from the file list it cached on disk (no network), or None if that is unavailable."""
    from huggingface_hub import get_cached_repo_tree, try_to_load_from_cache
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    where = {key: options.get(key) for key in ("repo_type", "revision", "cache_dir")}
    try:
        files = get_cached_repo_tree(repo_id, **where)
    except (CachedRepoTreeNotFoundError, OSError, ValueError) as exc:
        log.info("no cached file list for %s (%s): download progress without a total", repo_id, exc)
        return None
    wanted = filter_repo_objects(
        files,
        allow_patterns=options.get("allow_patterns"),
        ignore_patterns=options.get("ignore_patterns"),
        key=lambda file: file.path,
    )
    return sum(
        file.size or 0
        for file in wanted
        if not isinstance(try_to_load_from_cache(repo_id, file.path, **where), str)
    )


def _accepts_tqdm_class(function: Callable[..., Any]) -> bool:
    try:
        return "tqdm_class" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


@contextmanager
def progress_of(progress: Progress) -> Iterator[bool]:
    """While active, diffusers' hub downloads in this process report their bytes to
    `progress`. Yields False (and logs a warning) if diffusers or huggingface_hub no
    longer fit: the download then runs as before, without byte progress."""
    module = importlib.import_module(DIFFUSERS_MODULE)
    original = getattr(module, "snapshot_download", None)
    if original is None or not _accepts_tqdm_class(original):
        log.warning(
            "%s.snapshot_download takes no tqdm_class: hub downloads report no byte progress",
            DIFFUSERS_MODULE,
        )
        yield False
        return

    def snapshot_download(repo_id: str, **kwargs: Any) -> Any:
        tally = Tally(progress, lambda: expected_bytes(repo_id, kwargs))
        result = original(repo_id, **{**kwargs, "tqdm_class": tally.bar_class()})
        if tally.error is not None:
            raise tally.error
        return result

    module.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    try:
        yield True
    finally:
        module.snapshot_download = original  # type: ignore[attr-defined]
