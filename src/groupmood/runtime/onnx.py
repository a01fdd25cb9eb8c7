"""ONNX Runtime backend: PyTorch models exported once to ONNX, checked against PyTorch, run by ONNX Runtime.

Each model (a face or global branch, P-, R- or O-Net) is exported with the legacy TorchScript
exporter (no extra package needed at export time) with a dynamic batch axis (and dynamic height
and width for the fully convolutional P-Net) into ``$GROUPMOOD_HOME/onnx``. The file name is keyed
by the sha256 of the model's weights and the export recipe, and a JSON sidecar records the ONNX
file's own sha256, checked on every load: a changed model gets a new file, a damaged file is
exported again. At export the ONNX model must give the PyTorch model's outputs on real inputs
within :data:`PARITY_TOL` (max absolute difference); otherwise nothing is written and the export
fails.

Thread settings are set once per process (:func:`settings`): ``intra_op_num_threads`` = the CPUs
this process may use (``GROUPMOOD_ORT_THREADS`` overrides), sequential execution, and no spinning
of idle pool threads (``session.intra_op.allow_spinning = 0``), so that ONNX Runtime's pool does
not burn the cores that PyTorch's or the image decoder's work needs between two model calls, and no
memory arena (buffers are freed after each call: P-Net's input size changes at every level).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, WeightsError

BACKENDS = ("auto", "onnxruntime", "torch")
#: Bump when the export recipe changes: every cached file is then exported again.
EXPORT_VERSION = 1
OPSET = 17
#: Largest absolute difference allowed between ONNX Runtime's and PyTorch's outputs at export.
PARITY_TOL = 1e-4


def ort_available() -> bool:
    """Whether the ``onnxruntime`` package can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``onnxruntime`` or ``torch`` for a ``--backend`` choice: ``auto`` is ONNX Runtime on a CPU, PyTorch elsewhere."""
    dev = torch.device(device)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnxruntime" if dev.type == "cpu" and ort_available() else "torch"
    if backend == "onnxruntime":
        if dev.type != "cpu":
            raise ConfigError(f"the onnxruntime backend runs on the CPU here; on {dev} use --backend torch")
        if not ort_available():
            raise ConfigError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
                              "(or use --backend torch)")
    return backend


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime's session settings, the same for every session of a process."""

    intra_op_threads: int
    spinning: bool = False

    def session_options(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        # no arena and no memory pattern: P-Net's input changes size at every pyramid level, and an arena
        # keeps the largest of each buffer for ever (270 MB more peak RSS over 30 multiemova-dev photos)
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        opts.log_severity_level = 3
        return opts

    def describe(self) -> str:
        import onnxruntime as ort

        return (f"onnxruntime {ort.__version__} CPUExecutionProvider, intra_op_threads={self.intra_op_threads}, "
                f"inter_op_threads=1, sequential, spinning={'on' if self.spinning else 'off'}, no memory arena")


_SETTINGS: OrtSettings | None = None


def settings() -> OrtSettings:
    """This process's ONNX Runtime settings, fixed on first use (``GROUPMOOD_ORT_THREADS``, ``GROUPMOOD_ORT_SPIN``)."""
    global _SETTINGS
    if _SETTINGS is None:
        env = os.environ.get("GROUPMOOD_ORT_THREADS")
        try:
            threads = int(env) if env else len(os.sched_getaffinity(0))
        except ValueError:
            raise ConfigError(f"GROUPMOOD_ORT_THREADS={env!r} is not a whole number of threads") from None
        except AttributeError:  # no sched_getaffinity (macOS, Windows)
            threads = os.cpu_count() or 1
        _SETTINGS = OrtSettings(max(1, threads), os.environ.get("GROUPMOOD_ORT_SPIN", "0") == "1")
    return _SETTINGS


def onnx_cache_dir() -> Path:
    """Where exported ONNX files live: ``$GROUPMOOD_HOME/onnx``."""
    from ..weights import home

    return home() / "onnx"


class OrtModel:
    """One ONNX Runtime session: float32 NCHW arrays in, the model's outputs (float32 arrays) out."""

    def __init__(self, path: str | Path, parity: float | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.parity = parity
        self.session = ort.InferenceSession(str(self.path), sess_options=settings().session_options(),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"OrtModel({self.path.name!r}, parity={self.parity})"

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})


class TorchFacade:
    """An :class:`OrtModel` called like a PyTorch module: a tensor in, a tuple of CPU tensors out (MTCNN nets)."""

    def __init__(self, model: OrtModel) -> None:
        self.model = model

    def __repr__(self) -> str:
        return f"TorchFacade({self.model!r})"

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.model(x.detach().cpu().contiguous().numpy())
        return tuple(torch.from_numpy(o) for o in outs)


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes): the identity of what is exported."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _torch_outputs(module: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    out = module(x)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in outs]


def export_onnx(module: torch.nn.Module, name: str, output_names: Sequence[str], example: torch.Tensor,
                parity_inputs: Callable[[], Sequence[torch.Tensor]], dynamic_hw: bool = False,
                recipe: Mapping[str, Any] | None = None, cache_dir: Path | None = None) -> OrtModel:
    """The ONNX Runtime model of ``module``: from the cache when its file is there and intact, else exported now.

    ``example`` is one input of the right shape; ``parity_inputs`` gives real inputs on which
    ONNX Runtime's outputs must match PyTorch's within :data:`PARITY_TOL` (called only at export).
    ``recipe`` joins the weights' sha256 in the cache key (input size, folding, ...).
    """
    module = module.eval()
    key = {"name": name, "weights": weights_sha256(module), "recipe": dict(recipe or {}),
           "input": list(example.shape[1:]), "dynamic_hw": dynamic_hw, "export": EXPORT_VERSION, "opset": OPSET}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_dir or onnx_cache_dir()
    path = folder / f"{name}-{digest}.onnx"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        from ..weights import sha256_file

        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("sha256") == sha256_file(path):
            return OrtModel(path, meta.get("parity_max_abs_diff"))
    return _export(module, key, path, output_names, example, parity_inputs, dynamic_hw)


def _export(module: torch.nn.Module, key: Mapping[str, Any], path: Path, output_names: Sequence[str],
            example: torch.Tensor, parity_inputs: Callable[[], Sequence[torch.Tensor]], dynamic_hw: bool) -> OrtModel:
    import onnxruntime as ort

    if importlib.util.find_spec("onnx") is None:
        raise WeightsError(f"exporting {key['name']} to ONNX needs the onnx package: pip install onnx "
                           "(or use --backend torch)")
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    dynamic = {"input": axes, **{n: {0: "batch"} for n in output_names}}
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = example.detach().clone().contiguous().float().cpu()
        torch.onnx.export(module, (example,), buf, input_names=["input"], output_names=list(output_names),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        data = buf.getvalue()
        session = ort.InferenceSession(data, sess_options=settings().session_options(),
                                       providers=["CPUExecutionProvider"])
        worst = 0.0
        inputs = list(parity_inputs())
        if not inputs:
            raise WeightsError(f"no inputs to check the ONNX export of {key['name']} against PyTorch")
        for x in inputs:
            x = x.detach().contiguous().float().cpu()
            ref = _torch_outputs(module, x)
            got = session.run(None, {"input": x.numpy()})
            for r, g in zip(ref, got):
                worst = max(worst, float(np.max(np.abs(r - g), initial=0.0)))
    if not worst <= PARITY_TOL:
        raise WeightsError(f"ONNX export of {key['name']} differs from PyTorch by {worst:.2e} (limit {PARITY_TOL:g}); "
                           "use --backend torch and report the model")
    from ..weights import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".onnx-", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    meta = {**key, "sha256": sha256_file(path), "parity_max_abs_diff": worst, "parity_inputs": int(sum(len(x) for x in inputs)),
            "torch": torch.__version__, "onnxruntime": ort.__version__}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".onnx-", suffix=".json", delete=False,
                                     encoding="utf-8") as tmp:
        json.dump(meta, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path.with_suffix(".json"))
    return OrtModel(path, worst)


def parity_photos() -> list[np.ndarray]:
    """The real photo exports are checked on: the ``group`` sample (five faces; fetched once, sha256-checked)."""
    from ..images import load_image
    from ..samples import sample_path

    return [load_image(sample_path("group"))]
