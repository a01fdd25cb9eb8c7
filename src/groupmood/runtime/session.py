"""ONNX Runtime sessions from the cache, without PyTorch: what ``predict`` runs on a CPU.

Each model (a face or global branch, P-, R- or O-Net) is exported once into
``$GROUPMOOD_HOME/onnx`` (:mod:`groupmood.runtime.export`, which needs PyTorch). A file's name is
keyed by its *key*: the sha256 of the weight file it was exported from plus the export recipe
(input size, BatchNorm folding, ...), :data:`EXPORT_VERSION` and :data:`OPSET`. So this module
finds a model's ONNX file from the weight file's sha256 alone, without building the PyTorch
model, and ``predict`` never imports torch once the files are there. A JSON sidecar records the
ONNX file's own sha256 (checked on every load: a damaged file is exported again), the parity
found at export and what a caller needs to use the model without PyTorch (classes, input recipe).

Thread settings are set once per process (:func:`settings`): one intra-op thread per session
(``GROUPMOOD_ORT_THREADS`` overrides), because ``predict`` works on one photo per CPU at once
(:meth:`groupmood.pipeline.GroupEmotionRecognizer.photo_workers`): one photo's many small model
calls leave a second intra-op thread mostly idle, so photos in parallel use the CPUs better
(numbers in ``docs/performance.md``). Sequential execution, no
spinning of idle pool threads (``session.intra_op.allow_spinning = 0``). A memory arena and a memory
pattern only for models whose input has a fixed height and width (R-Net, O-Net, the branches; the
sidecar's ``dynamic_hw``): buffers are kept between calls instead of allocated on each.
P-Net runs without (its input size changes at every level, and an arena would keep the largest
of each buffer for good).
:func:`set_intra_op_threads` changes the thread count of the sessions made after it (a caller that
labels one photo at a time may want every CPU in one session).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["BACKENDS", "ENGINES", "EXPORT_VERSION", "OPSET", "PARITY_TOL", "OrtModel", "OrtSettings", "cache_path",
           "load_cached", "onnx_cache_dir", "onnx_key", "safetensors_model_name", "ort_available", "photo_workers", "resolve_backend", "set_intra_op_threads",
           "settings"]

#: What runs a model: ONNX Runtime or PyTorch.
ENGINES = ("onnxruntime", "torch")
#: What a caller may ask for: an engine, or ``auto`` (:func:`resolve_backend` picks one per device).
BACKENDS = ("auto", *ENGINES)
#: Bump when the export recipe or the cache key changes: every cached file is then exported again.
EXPORT_VERSION = 3
OPSET = 17
#: Largest absolute difference allowed between ONNX Runtime's and PyTorch's outputs at export.
PARITY_TOL = 1e-4


def ort_available() -> bool:
    """Whether the ``onnxruntime`` package can be imported here.

    Returns:
        True when it can.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def device_type(device: Any) -> str:
    """The type of a device, without importing PyTorch.

    Args:
        device: a string (``cuda:1``) or a ``torch.device``.

    Returns:
        ``cpu``, ``cuda``, ``mps``, ...

    >>> device_type("cuda:1")
    'cuda'
    """
    return str(device).split(":", 1)[0]


def resolve_backend(backend: str, device: Any) -> str:
    """What runs the models for a ``--backend`` choice.

    Args:
        backend: ``auto``, ``onnxruntime`` or ``torch``.
        device: where the models run.

    Returns:
        ``onnxruntime`` or ``torch``: ``auto`` is ONNX Runtime on a CPU where it is installed, else PyTorch.

    Raises:
        ConfigError: for an unknown backend, or ``onnxruntime`` off a CPU or without the package.

    >>> resolve_backend("auto", "cuda:0")
    'torch'
    """
    kind = device_type(device)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnxruntime" if kind == "cpu" and ort_available() else "torch"
    if backend == "onnxruntime":
        if kind != "cpu":
            raise ConfigError(f"the onnxruntime backend runs on the CPU here; on {device} use --backend torch")
        if not ort_available():
            raise ConfigError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
                              "(or use --backend torch)")
    return backend


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime's session settings, the same for every session of a process."""

    intra_op_threads: int
    spinning: bool = False

    def session_options(self, fixed_shape: bool = False) -> Any:
        """Options of one session; ``fixed_shape``: the model's input has a fixed height and width (only
        the batch varies), so buffers may be kept between calls."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        # an arena and a memory pattern only where the input's height and width are fixed: P-Net's input
        # changes size at every pyramid level, and an arena keeps the largest of each buffer for ever
        # (peak memory grows with the photos seen); R-Net, O-Net and the branches (batches of at most a
        # chunk) reuse their buffers instead of allocating them on every call
        opts.enable_cpu_mem_arena = fixed_shape
        opts.enable_mem_pattern = fixed_shape
        opts.log_severity_level = 3
        return opts

    def describe(self) -> str:
        import onnxruntime as ort

        return (f"onnxruntime {ort.__version__} CPUExecutionProvider, intra_op_threads={self.intra_op_threads}, "
                f"inter_op_threads=1, sequential, spinning={'on' if self.spinning else 'off'}, "
                "memory arena for fixed-size inputs only")


_SETTINGS: OrtSettings | None = None
#: Intra-op threads of every session unless ``GROUPMOOD_ORT_THREADS`` says otherwise (:func:`set_intra_op_threads`).
_DEFAULT_THREADS = 1


def cpu_count() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def photo_workers(backend: str) -> int:
    """How many photos a command works on at once.

    Args:
        backend: ``onnxruntime`` or ``torch``.

    Returns:
        One per CPU under ONNX Runtime (one intra-op thread each), one under PyTorch (its own threads).

    >>> photo_workers("torch")
    1
    """
    return cpu_count() if backend == "onnxruntime" else 1


def settings() -> OrtSettings:
    """This process's ONNX Runtime settings, fixed on first use (``GROUPMOOD_ORT_THREADS``, ``GROUPMOOD_ORT_SPIN``)."""
    global _SETTINGS
    if _SETTINGS is None:
        env = os.environ.get("GROUPMOOD_ORT_THREADS")
        try:
            threads = int(env) if env else _DEFAULT_THREADS
        except ValueError:
            raise ConfigError(f"GROUPMOOD_ORT_THREADS={env!r} is not a whole number of threads") from None
        _SETTINGS = OrtSettings(max(1, threads), os.environ.get("GROUPMOOD_ORT_SPIN", "0") == "1")
    return _SETTINGS


def set_intra_op_threads(threads: int) -> OrtSettings:
    """Fix the threads of every later session (unless ``GROUPMOOD_ORT_THREADS`` is set); sessions made before keep theirs.

    Args:
        threads: intra-op threads per session (at least 1).

    Returns:
        The new :class:`OrtSettings`.
    """
    global _SETTINGS, _DEFAULT_THREADS
    _DEFAULT_THREADS, _SETTINGS = max(1, int(threads)), None
    return settings()


def onnx_cache_dir() -> Path:
    """Where exported ONNX files live: ``$GROUPMOOD_HOME/onnx``."""
    from ..weights import home

    return home() / "onnx"


def onnx_key(weights_sha256: str, **options: Any) -> dict[str, Any]:
    """The cache key of one exported model.

    Args:
        weights_sha256: the sha256 of the weights it comes from.
        **options: its export options (``fold_batchnorm`` for a branch, ``dynamic_hw`` for an MTCNN net).

    Returns:
        A JSON-ready mapping (:func:`cache_path`).

    >>> onnx_key("ab12", dynamic_hw=True)
    {'weights': 'ab12', 'dynamic_hw': True}
    """
    return {"weights": weights_sha256, **options}


def safetensors_model_name(path: Path) -> str | None:
    """``{family}-{model}`` of a groupmood ``.safetensors`` model file, from its header alone (no PyTorch): the
    name its ONNX file is cached under; None for another file or a damaged one (the PyTorch loader names the
    problem)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = {k: json.loads(v) for k, v in (fh.metadata() or {}).items() if k in ("model", "family", "arch", "recipe")}
    except Exception:
        return None
    model = raw.get("model") or (raw.get("arch") or {}).get("name")
    family = raw.get("family") or (raw.get("recipe") or {}).get("family")
    if not isinstance(model, str) or not isinstance(family, str):
        return None
    return f"{family}-{model}"


def full_key(name: str, key: Mapping[str, Any]) -> dict[str, Any]:
    """The whole cache key of model ``name``: the caller's key plus the export version and opset."""
    return {"name": name, **dict(key), "export": EXPORT_VERSION, "opset": OPSET}


def cache_path(name: str, key: Mapping[str, Any], cache_dir: Path | None = None) -> Path:
    """Where the ONNX file of a model exported under a key lives (it may not exist yet).

    Args:
        name: the model's cache name.
        key: a JSON-ready mapping naming the weights' sha256 (:func:`onnx_key`).
        cache_dir: the cache folder; :func:`onnx_cache_dir` by default.

    Returns:
        ``<cache_dir>/<name>-<digest of the whole key>.onnx``.

    >>> cache_path("mtcnn_pnet", onnx_key("ab12", dynamic_hw=True), Path("/cache")).parent.as_posix()
    '/cache'
    """
    digest = hashlib.sha256(json.dumps(full_key(name, key), sort_keys=True).encode()).hexdigest()[:20]
    return (cache_dir or onnx_cache_dir()) / f"{name}-{digest}.onnx"


class OrtModel:
    """One ONNX Runtime session: float32 NCHW arrays in, the model's outputs (float32 arrays) out.

    ``meta`` is the file's sidecar (key, parity, and what its exporter recorded: classes, recipe).
    Sessions may be called from several threads at once (ONNX Runtime's ``run`` is thread-safe).
    """

    def __init__(self, path: str | Path, parity: float | None = None, meta: Mapping[str, Any] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.parity = parity
        self.meta = dict(meta or {})
        fixed = self.meta.get("dynamic_hw") is False
        self.session = ort.InferenceSession(str(self.path), sess_options=settings().session_options(fixed),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"OrtModel({self.path.name!r}, parity={self.parity})"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})


def load_cached(name: str, key: Mapping[str, Any], cache_dir: Path | None = None) -> OrtModel | None:
    """A model's ONNX Runtime session from the cache, without PyTorch.

    Args:
        name: the model's cache name.
        key: its cache key (:func:`onnx_key`).
        cache_dir: the cache folder; :func:`onnx_cache_dir` by default.

    Returns:
        The :class:`OrtModel` when its file and sidecar are there and intact (sha256-checked), else None.

    >>> load_cached("mtcnn_onet", onnx_key("0" * 64, dynamic_hw=False)) is None  # never exported
    True
    """
    path = cache_path(name, key, cache_dir)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    from ..weights import sha256_file

    if not isinstance(meta, dict) or meta.get("sha256") != sha256_file(path):
        return None
    return OrtModel(path, meta.get("parity_max_abs_diff"), meta)
