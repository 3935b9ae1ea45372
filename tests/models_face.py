"""Tiny random-weight face models, loaded through insightface's real loading code.

- `build_tiny_scrfd`: SCRFD's signature (dynamic NCHW input, 9 outputs: scores, boxes
  and 5 keypoints for strides 8, 16, 32, 2 anchors). It "detects" a face wherever the
  image has a warm blob (red well above blue, like `FACE_COLOUR`): an image without
  one yields no score above insightface's 0.5 threshold.
- `build_tiny_arcface`: 1x3x112x112 -> 1x512, an embedding from the mean colour.
- `build_tiny_inswapper`: "target" 1x3x128x128 + "source" 1x512 -> 1x3x128x128, a
  recoloured crop; its last initializer is the 512x512 `emap` INSwapper reads.

`build_face_models(root)` writes them where the tests point livepix at them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

FACE_COLOUR = (240, 160, 40)  # the "skin" the fake detector looks for
BACKGROUND = (90, 110, 150)  # cool grey-blue: never a face

# ArcFace's 5-point template for a 112x112 crop (eyes, nose, mouth corners).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
BOX_PX = 96  # side of a detected face box in the detector's input, pixels
SCORE_GAIN, SCORE_THRESHOLD = 40.0, 0.15  # score = sigmoid(gain * (peak - threshold))


def _save(graph: Any, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_tiny_scrfd(path: Path) -> Path:
    """A fake SCRFD: one face per warm blob, found at stride 32 only.

    Input x is insightface's blob: RGB, (pixel - 127.5) / 128, NCHW, any size that is a
    multiple of 32. warm = relu(R - B - 1) is ~0.56 on FACE_COLOUR and 0 on grey, blue
    or the black padding. At stride 32 it is averaged per cell, then over 3x3 cells
    (a 96 px window); a cell keeps its value only where it is the 3x3 maximum (a
    heat-map peak, as CenterNet does), so one blob fires one anchor. Anchor 1 of every
    cell and all anchors of strides 8 and 16 score ~0. Boxes and keypoints are the
    same for every anchor: a BOX_PX square and ArcFace's template scaled into it,
    shifted half a cell because SCRFD's anchor points are cell corners.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([1, 0, -1], np.float32).reshape(1, 3, 1, 1), "warm_w"),
        numpy_helper.from_array(np.array([-1], np.float32), "warm_b"),
        numpy_helper.from_array(np.array([[[[SCORE_GAIN]]], [[[0.0]]]], np.float32), "score_w"),
        numpy_helper.from_array(
            np.array([-SCORE_GAIN * SCORE_THRESHOLD, -20.0], np.float32), "score_b"
        ),
        numpy_helper.from_array(np.zeros((2, 1, 1, 1), np.float32), "zero_score_w"),
        numpy_helper.from_array(np.array([-20.0, -20.0], np.float32), "zero_score_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input.1", "warm_w", "warm_b"], ["warm_lin"]),
        helper.make_node("Relu", ["warm_lin"], ["warm"]),
    ]
    half = BOX_PX / 2
    scores: list[Any] = []
    boxes: list[Any] = []
    kpss: list[Any] = []
    for stride in (8, 16, 32):
        s = str(stride)
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["warm"],
                [f"cell{s}"],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
        )
        if stride == 32:
            nodes += [
                helper.make_node(
                    "AveragePool",
                    ["cell32"],
                    ["win32"],
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    count_include_pad=1,
                ),
                helper.make_node(
                    "MaxPool", ["win32"], ["max32"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
                ),
                helper.make_node("Equal", ["win32", "max32"], ["is_peak32"]),
                helper.make_node("Cast", ["is_peak32"], ["peak_mask32"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["win32", "peak_mask32"], ["peak32"]),
                helper.make_node("Conv", ["peak32", "score_w", "score_b"], ["logit32"]),
            ]
        else:
            nodes.append(
                helper.make_node(
                    "Conv", [f"cell{s}", "zero_score_w", "zero_score_b"], [f"logit{s}"]
                )
            )
        nodes.append(helper.make_node("Sigmoid", [f"logit{s}"], [f"score_map{s}"]))
        # Distances in stride units from the anchor (the cell's top-left corner) to the
        # box sides, and keypoint offsets; constant per anchor, via a zero-weight conv.
        centre = stride / 2
        box = (
            np.array([half - centre, half - centre, half + centre, half + centre], np.float32)
            / stride
        )
        kps = ((ARCFACE_TEMPLATE - 56.0) * (BOX_PX / 112.0) + centre).reshape(-1) / stride
        for kind, values in (("bbox", box), ("kps", kps)):
            inits += [
                numpy_helper.from_array(
                    np.zeros((2 * values.size, 1, 1, 1), np.float32), f"{kind}_w{s}"
                ),
                numpy_helper.from_array(np.tile(values, 2).astype(np.float32), f"{kind}_b{s}"),
            ]
            nodes.append(
                helper.make_node(
                    "Conv", [f"cell{s}", f"{kind}_w{s}", f"{kind}_b{s}"], [f"{kind}_map{s}"]
                )
            )
        # (1, 2*K, h, w) -> (h*w*2, K): rows ordered cell by cell, anchor within cell,
        # which is how SCRFD lays out its anchor centres.
        for kind, width, out in (("score", 1, scores), ("bbox", 4, boxes), ("kps", 10, kpss)):
            inits.append(
                numpy_helper.from_array(np.array([-1, width], np.int64), f"{kind}_shape{s}")
            )
            nodes += [
                helper.make_node(
                    "Transpose", [f"{kind}_map{s}"], [f"{kind}_nhwc{s}"], perm=[0, 2, 3, 1]
                ),
                helper.make_node(
                    "Reshape", [f"{kind}_nhwc{s}", f"{kind}_shape{s}"], [f"{kind}_{s}"]
                ),
            ]
            out.append(
                helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [f"n{s}", width])
            )
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        scores + boxes + kpss,
        initializer=inits,
    )
    return _save(graph, path)


def build_tiny_arcface(path: Path, seed: int = 1) -> Path:
    """A fake ArcFace: the crop's mean colour through a fixed random 3x512 projection."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 512)).astype(np.float32), "proj"),
        numpy_helper.from_array(rng.normal(size=(512,)).astype(np.float32), "proj_b"),
        numpy_helper.from_array(np.array([1, 3], np.int64), "flat_shape"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "proj", "proj_b"], ["fc1"]),
        ],
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 512])],
        initializer=inits,
    )
    return _save(graph, path)


def build_tiny_inswapper(path: Path, seed: int = 2) -> Path:
    """A fake inswapper: the target crop (0-1) tinted by a colour derived from the source.

    out = sigmoid(4 * (target - 0.5) + source @ W), W a fixed 512x3 matrix, so a swap
    visibly recolours the face. `emap` (512x512) must be the graph's last initializer.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.full((1,), 4.0, np.float32), "gain"),
        numpy_helper.from_array(np.full((1,), 0.5, np.float32), "mid"),
        numpy_helper.from_array((rng.normal(size=(512, 3)) * 3.0).astype(np.float32), "tint_w"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "tint_shape"),
        numpy_helper.from_array(np.eye(512, dtype=np.float32), "emap"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["target", "mid"], ["centred"]),
            helper.make_node("Mul", ["centred", "gain"], ["contrast"]),
            helper.make_node("MatMul", ["source", "tint_w"], ["tint"]),
            helper.make_node("Reshape", ["tint", "tint_shape"], ["tint4"]),
            helper.make_node("Add", ["contrast", "tint4"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_inswapper",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=inits,
    )
    return _save(graph, path)


def build_face_models(root: Path) -> tuple[Path, Path]:
    """The pack dir (detection + recognition) and the swapper file under `root`."""
    pack = root / "models" / "faces" / "tinypack"
    build_tiny_scrfd(pack / "det_tiny.onnx")
    build_tiny_arcface(pack / "w600k_tiny.onnx")
    swapper = build_tiny_inswapper(root / "models" / "inswapper_tiny.onnx")
    return pack, swapper


def face_picture(width: int, height: int, faces: list[tuple[int, int, int]]) -> Image.Image:
    """A grey-blue picture with a FACE_COLOUR disk (x, y, radius) per face.

    The detector sees the picture scaled to fit 640x640. Checked on 320x240 pictures
    (x2): a radius of 16-44 px is exactly one face, under 16 none, and past ~46 one
    disk starts to read as several (a flat blob has no single peak).
    """
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for x, y, r in faces:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=FACE_COLOUR)
    return image
