"""Export PyTorch models to ONNX once, checked against PyTorch: what fills the cache :mod:`.session` reads.

Each model is exported with the legacy TorchScript exporter (no extra package needed at export
time) with a dynamic batch axis (and dynamic height and width for the fully convolutional P-Net).
Every export goes through two graph rewrites that keep the values and let ONNX Runtime keep its
blocked convolution layout (:mod:`.graph`): PReLUs as depthwise ReLU convolutions, and no empty
optional inputs (so that zero padding folds into convolutions). At export the ONNX model must give
the PyTorch model's outputs on real inputs within :data:`~groupmood.runtime.session.PARITY_TOL`
(max absolute difference); otherwise nothing is written and the export fails. Files are written
atomically, the ONNX file before its sidecar.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from .graph import prelu_as_depthwise, without_absent_inputs
from .session import OPSET, PARITY_TOL, OrtModel, cache_path, full_key, load_cached, settings

__all__ = ["FeaturesOf", "export_onnx", "parity_photos", "plain_onnx", "weights_sha256"]


class FeaturesOf(torch.nn.Module):
    """A face net's trunk alone (its ``forward_features``): what branches sharing one trunk export once."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def weights_sha256(module: torch.nn.Module) -> str:
    """The sha256 of a module's state: the cache key of a model that has no weight file.

    Args:
        module: the model.

    Returns:
        The hex digest of its state's names, dtypes, shapes and bytes.

    >>> len(weights_sha256(torch.nn.Linear(2, 1)))
    64
    """
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


def export_onnx(module: torch.nn.Module, name: str, key: Mapping[str, Any], output_names: Sequence[str],
                example: torch.Tensor, parity_inputs: Callable[[], Sequence[torch.Tensor]], dynamic_hw: bool = False,
                cache_dir: Path | None = None, meta: Mapping[str, Any] | None = None) -> OrtModel:
    """The ONNX Runtime model of ``module``: from the cache when its file is there and intact, else exported now.

    Args:
        module: the PyTorch model.
        name: its cache name.
        key: what is exported (the weights' sha256 and the export recipe; JSON-ready):
            :func:`~groupmood.runtime.session.load_cached` finds the file from it without PyTorch.
        output_names: the names of the model's outputs.
        example: one input of the right shape.
        parity_inputs: gives real inputs on which ONNX Runtime's outputs must match PyTorch's within
            :data:`~groupmood.runtime.session.PARITY_TOL` (called only at export).
        dynamic_hw: export height and width as dynamic axes (fully convolutional nets).
        cache_dir: the cache folder; :func:`~groupmood.runtime.session.onnx_cache_dir` by default.
        meta: joins the sidecar (what a torch-free caller needs: classes, input recipe).

    Returns:
        The :class:`~groupmood.runtime.session.OrtModel`.

    >>> import tempfile
    >>> from groupmood import create_model
    >>> from groupmood.runtime.session import onnx_key
    >>> net = create_model("resnet_tiny_48", num_classes=3).eval()
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ort = export_onnx(net, "tiny", onnx_key(weights_sha256(net)), ["logits"], torch.zeros(1, 1, 48, 48),
    ...                       lambda: [torch.rand(2, 1, 48, 48)], cache_dir=Path(d))
    ...     out = ort(np.zeros((4, 1, 48, 48), np.float32))
    >>> out[0].shape
    (4, 3)
    """
    cached = load_cached(name, key, cache_dir)
    if cached is not None:
        return cached
    return _export(module.eval(), name, key, cache_path(name, key, cache_dir), output_names, example, parity_inputs,
                   dynamic_hw, meta or {})


def plain_onnx(module: torch.nn.Module, example: torch.Tensor, output_names: Sequence[str] = ("output",),
               dynamic_hw: bool = False) -> bytes:
    """``module`` exported as :func:`export_onnx` exports it, before its graph rewrites (:mod:`.graph`).

    Args:
        module: the PyTorch model.
        example: one input of the right shape.
        output_names: the names of the model's outputs.
        dynamic_hw: export height and width as dynamic axes (fully convolutional nets).

    Returns:
        The serialised ONNX model: input ``input``, a dynamic batch axis.

    >>> len(plain_onnx(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8))) > 0
    True
    """
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    dynamic = {"input": axes, **{n: {0: "batch"} for n in output_names}}
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example.detach().clone().contiguous().float().cpu(),), buf, input_names=["input"],
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    return buf.getvalue()


def _export(module: torch.nn.Module, name: str, key: Mapping[str, Any], path: Path, output_names: Sequence[str],
            example: torch.Tensor, parity_inputs: Callable[[], Sequence[torch.Tensor]], dynamic_hw: bool,
            meta: Mapping[str, Any]) -> OrtModel:
    import onnxruntime as ort

    if importlib.util.find_spec("onnx") is None:
        raise WeightsError(f"exporting {name} to ONNX needs the onnx package: pip install onnx "
                           "(or use --backend torch)")
    data = prelu_as_depthwise(without_absent_inputs(plain_onnx(module, example, output_names, dynamic_hw)))
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = ort.InferenceSession(data, sess_options=settings().session_options(),
                                       providers=["CPUExecutionProvider"])
        worst = 0.0
        inputs = list(parity_inputs())
        if not inputs:
            raise WeightsError(f"no inputs to check the ONNX export of {name} against PyTorch")
        for x in inputs:
            x = x.detach().contiguous().float().cpu()
            ref = _torch_outputs(module, x)
            got = session.run(None, {"input": x.numpy()})
            for r, g in zip(ref, got):
                worst = max(worst, float(np.max(np.abs(r - g), initial=0.0)))
    if not worst <= PARITY_TOL:
        raise WeightsError(f"ONNX export of {name} differs from PyTorch by {worst:.2e} (limit {PARITY_TOL:g}); "
                           "use --backend torch and report the model")
    from ..weights import sha256_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".onnx-", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    sidecar = {**dict(meta), "key": full_key(name, key), "input": list(example.shape[1:]), "dynamic_hw": dynamic_hw,
               "sha256": sha256_file(path), "parity_max_abs_diff": worst,
               "parity_inputs": int(sum(len(x) for x in inputs)), "torch": torch.__version__,
               "onnxruntime": ort.__version__}
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".onnx-", suffix=".json", delete=False,
                                     encoding="utf-8") as tmp:
        json.dump(sidecar, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path.with_suffix(".json"))
    return OrtModel(path, worst, sidecar)


def parity_photos() -> list[np.ndarray]:
    """The real photos exports are checked on.

    Returns:
        The ``group`` sample photo (five faces; fetched once, sha256-checked) as an RGB array.

    >>> [p.shape for p in parity_photos()]
    [(667, 1000, 3)]
    """
    from ..images import load_image
    from ..samples import sample_path

    return [load_image(sample_path("group"))]
