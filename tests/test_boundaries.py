"""The api stays light: it never imports a model library."""

from __future__ import annotations

import subprocess
import sys

MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "insightface", "rembg", "onnxruntime", "cv2")


def test_the_api_imports_no_model_library() -> None:
    code = (
        "import sys, app.main;"
        "from livepix.config import Settings;"
        "app.main.create_app(Settings(redis_url='redis://127.0.0.1:1/0'));"
        f"print(','.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
