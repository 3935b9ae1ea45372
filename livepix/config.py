"""Settings: the one place that reads the environment (and a `.env` file)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values

from .wire import RESULT_TTL_S

# big-lama as TorchScript, as simple-lama-inpainting publishes it (Apache-2.0, like LaMa
# itself: README, Models and licences).
DEFAULT_LAMA_MODEL = (
    "https://github.com/enesmsahin/simple-lama-inpainting/releases/download/v0.1.0/big-lama.pt"
)


class ConfigError(Exception):
    """Raised when an environment variable holds a value livepix cannot use."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "livepix")


@dataclass(frozen=True)
class Settings:
    """Every tunable of livepix, with the default a new user needs.

    `ENV` maps each field to its environment variable; `livepix --help` prints them.
    """

    redis_url: str | None = None
    redis_cluster: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = field(default_factory=_default_data_dir)
    result_ttl_s: int = RESULT_TTL_S
    max_body_mb: float = 25.0
    max_image_pixels: int = 16_000_000
    max_image_side: int = 4096
    api_keys: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_queued_per_owner: int = 1000
    device: str = "auto"
    txt2img_model: str = ""
    preview_model: str = "madebyollin/taesd"
    rembg_model: str = "u2net"
    rembg_mirror: str = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"
    face_model_dir: str = ""
    swapper_model: str = ""
    lama_model: str = DEFAULT_LAMA_MODEL
    gpu_memory_fraction: float | None = None
    gpu_threads: int = 1
    cpu_threads: int = 2
    max_attempts: int = 3
    worker_lost_after_s: int = 60
    task_time_limit_s: int = 1800
    worker_poll_ms: int = 50
    sse_keepalive_s: int = 15
    log_level: str = "info"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def model_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @property
    def cluster(self) -> bool:
        """Whether Redis is a cluster (`LIVEPIX_REDIS_CLUSTER` or a `+cluster` URL scheme)."""
        from .storage import is_cluster

        return bool(self.redis_url) and is_cluster(self.redis_url or "", self.redis_cluster)


ENV: dict[str, tuple[str, str]] = {
    "redis_url": ("REDIS_URL", "external Redis URL; unset = embedded Redis started by `livepix serve`"),
    "redis_cluster": ("LIVEPIX_REDIS_CLUSTER", "1 = REDIS_URL names a node of a Redis Cluster (so does a redis+cluster:// URL)"),
    "host": ("LIVEPIX_HOST", "api bind address (127.0.0.1)"),
    "port": ("LIVEPIX_PORT", "api port (8000)"),
    "data_dir": ("LIVEPIX_DATA_DIR", "embedded Redis data and model cache (~/.local/share/livepix)"),
    "result_ttl_s": ("LIVEPIX_RESULT_TTL_S", "how long events and results live, seconds (3600)"),
    "max_body_mb": ("LIVEPIX_MAX_BODY_MB", "request body limit in MB (25)"),
    "max_image_pixels": ("LIVEPIX_MAX_IMAGE_PIXELS", "largest accepted image, pixels (16000000)"),
    "max_image_side": ("LIVEPIX_MAX_IMAGE_SIDE", "largest accepted image side, pixels (4096)"),
    "api_keys": ("LIVEPIX_API_KEYS", "comma-separated API keys; unset = no auth"),
    "allowed_origins": ("LIVEPIX_ALLOWED_ORIGINS", "extra Origins allowed to open WebSockets and use the API from a page (CORS) (* = any)"),
    "max_queued_per_owner": ("LIVEPIX_MAX_QUEUED_PER_OWNER", "waiting tasks one owner may have (1000)"),
    "device": ("LIVEPIX_DEVICE", "auto, cpu, cuda, cuda:N (auto)"),
    "txt2img_model": ("LIVEPIX_TXT2IMG_MODEL", "diffusers model id or local dir"),
    "preview_model": ("LIVEPIX_PREVIEW_MODEL", "generation previews: a TAESD (diffusers AutoencoderTiny) id or local dir, or `latent` (madebyollin/taesd)"),
    "rembg_model": ("LIVEPIX_REMBG_MODEL", "rembg model name, or path or URL of an .onnx file (u2net)"),
    "rembg_mirror": ("LIVEPIX_REMBG_MIRROR", "base URL that named rembg models are fetched from (rembg's GitHub release)"),
    "face_model_dir": ("LIVEPIX_FACE_MODEL_DIR", "insightface pack dir (detection + recognition)"),
    "swapper_model": ("LIVEPIX_SWAPPER_MODEL", "path to an inswapper .onnx"),
    "lama_model": ("LIVEPIX_LAMA_MODEL", "LaMa TorchScript file, path or URL, or `none` for OpenCV only (big-lama.pt, fetched on first use)"),
    "gpu_memory_fraction": ("LIVEPIX_GPU_MEMORY_FRACTION", "share of the GPU's memory a worker may take, 0-1 (unset = no cap; ignored on the CPU)"),
    "gpu_threads": ("LIVEPIX_GPU_THREADS", "tasks one gpu worker process runs at once (1)"),
    "cpu_threads": ("LIVEPIX_CPU_THREADS", "tasks one cpu worker process runs at once (2)"),
    "max_attempts": ("LIVEPIX_MAX_ATTEMPTS", "runs of a task whose worker died before it fails (3)"),
    "worker_lost_after_s": ("LIVEPIX_WORKER_LOST_AFTER_S", "a running task whose worker vanished and was not re-run by then fails `worker_lost` (60)"),
    "task_time_limit_s": ("LIVEPIX_TASK_TIME_LIMIT_S", "a task running longer fails with `timeout` (1800)"),
    "worker_poll_ms": ("LIVEPIX_WORKER_POLL_MS", "idle worker poll interval, ms (50)"),
    "sse_keepalive_s": ("LIVEPIX_SSE_KEEPALIVE_S", "seconds between keepalive comments on a quiet SSE stream (15)"),
    "log_level": ("LIVEPIX_LOG_LEVEL", "debug, info, warning, error (info)"),
}


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env") -> Settings:
    """Build `Settings` from the environment, falling back to a `.env` file, then defaults."""
    values: dict[str, str] = {}
    if env_file and os.path.isfile(env_file):
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)

    kwargs: dict[str, object] = {}
    for f in fields(Settings):
        var = ENV[f.name][0]
        raw = values.get(var)
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        try:
            if f.type == "bool":
                if raw.lower() not in _BOOLS:
                    raise ValueError(raw)
                kwargs[f.name] = _BOOLS[raw.lower()]
            elif f.type == "int":
                kwargs[f.name] = int(raw)
            elif f.type in ("float", "float | None"):
                kwargs[f.name] = float(raw)
            elif f.type == "tuple[str, ...]":
                kwargs[f.name] = tuple(k.strip() for k in raw.split(",") if k.strip())
            else:
                kwargs[f.name] = raw
        except ValueError as exc:
            kind = str(f.type).removesuffix(" | None")
            raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from exc
    fraction = kwargs.get("gpu_memory_fraction")
    if isinstance(fraction, float) and not 0 < fraction <= 1:
        raise ConfigError(
            f"LIVEPIX_GPU_MEMORY_FRACTION={fraction!r} must be above 0 and at most 1 (a share "
            "of the GPU's memory); unset it for no cap"
        )
    return Settings(**kwargs)  # type: ignore[arg-type]


def env_help() -> str:
    """The environment variables, one per line, for `livepix --help`."""
    return "\n".join(f"  {var:<28} {text}" for var, text in ENV.values())
