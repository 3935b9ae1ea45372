"""The wheels `bench.gpu_check` needs on a GPU machine whose Python 3.12 has CUDA torch
and nothing else (no index either): downloaded here, carried there, installed there.

    python -m bench.gpu_wheels                 # download bench/gpu_requirements.txt into .whl/
    python -m bench.gpu_wheels --pin           # rewrite that list from this machine's versions
    python -m bench.gpu_wheels --only python-dotenv   # one wheel: a check of the command

Wheels are for CPython 3.12 on manylinux x86_64 (`pip download --only-binary=:all:
--python-version 3.12 --platform ...`), one per pinned package and no dependency
resolution (`--no-deps`): pip would otherwise fetch a multi-GB CUDA torch for
accelerate. The list is the closure of what the torch engines import (diffusers,
transformers, accelerate, Pillow, numpy, and livepix's own python-dotenv, redis,
dramatiq), less what every torch wheel already brings (TORCH_PROVIDES). The ONNX
engines (rembg, insightface, onnxruntime-gpu, OpenCV) are not in it: with their
dependencies they are several hundred MB; `gpu_check` reports them as skipped where
they are not installed.

On the GPU machine, `python -m bench.gpu_check --wheels .whl` installs them first with
`pip install --no-index --no-deps --target .pydeps .whl/*.whl` and puts `.pydeps` on
`sys.path`; nothing else there changes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "bench" / "gpu_requirements.txt"
ROOTS = ["diffusers", "transformers", "accelerate", "pillow", "numpy", "python-dotenv", "redis", "dramatiq"]
# What a torch wheel depends on (and so any Python with CUDA torch has), besides nvidia-*
# and triton.
TORCH_PROVIDES = {
    "torch", "filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
    "typing-extensions", "setuptools",
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]


def pin() -> list[str]:
    """`name==version` for the closure of ROOTS as installed here, less TORCH_PROVIDES."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    todo = list(ROOTS)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pinned or name in TORCH_PROVIDES or name.startswith("nvidia-") or name == "triton":
            continue
        dist = metadata.distribution(name)
        pinned[name] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": "", "python_version": "3.12"}):
                todo.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def download(requirements: list[str], dest: Path, python: str = "3.12") -> int:
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", ""),
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
        "--dest", str(dest), *requirements,
    ]
    print(" ".join(command), flush=True)
    code = subprocess.call(command)
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest}, {size / 2**20:.1f} MiB")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pin", action="store_true", help=f"rewrite {REQUIREMENTS.name} from this machine")
    parser.add_argument("--only", nargs="*", help="download just these names (at their pinned versions)")
    parser.add_argument("--dest", default=str(ROOT / ".whl"), help="where the wheels go (.whl, git-ignored)")
    parser.add_argument("--python", default="3.12", help="CPython version of the GPU machine (3.12)")
    args = parser.parse_args(argv)
    if args.pin:
        lines = pin()
        header = "# Wheels bench/gpu_check.py needs beside CUDA torch: `python -m bench.gpu_wheels --pin` writes this.\n"
        REQUIREMENTS.write_text(header + "\n".join(lines) + "\n")
        print(f"{len(lines)} packages pinned in {REQUIREMENTS}")
        return 0
    pinned = [line for line in REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#")]
    if args.only:
        wanted = {name.lower() for name in args.only}
        pinned = [line for line in pinned if line.split("==")[0] in wanted]
    return download(pinned, Path(args.dest), args.python)


if __name__ == "__main__":
    sys.exit(main())
