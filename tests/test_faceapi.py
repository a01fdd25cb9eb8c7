"""face-api.js's expression net: the TF.js reader, the name mapping, and the real npm weights where cached."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groupmood import weights
from groupmood.errors import WeightsError
from groupmood.models import create_model, model_info
from groupmood.models.converters import faceapi_state_dict, load_faceapi_expression, read_tfjs
from groupmood.models.faceapi import FACEAPI_CLASSES, FaceApiExpressionNet


def _to_tfjs(model: FaceApiExpressionNet) -> dict[str, np.ndarray]:
    """The inverse of faceapi_state_dict: this module's weights under face-api's names and TF layouts."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {}
    for b in range(4):
        pre, dst = f"blocks.{b}.", f"dense{b}/"
        if b == 0:
            out[dst + "conv0/filters"] = sd[pre + "conv0.weight"].transpose(2, 3, 1, 0)
            out[dst + "conv0/bias"] = sd[pre + "conv0_bias"]
        for k in range(0 if b else 1, 4):
            out[f"{dst}conv{k}/depthwise_filter"] = sd[f"{pre}conv{k}.depthwise.weight"].transpose(2, 3, 0, 1)
            out[f"{dst}conv{k}/pointwise_filter"] = sd[f"{pre}conv{k}.pointwise.weight"].transpose(2, 3, 1, 0)
            out[f"{dst}conv{k}/bias"] = sd[f"{pre}conv{k}.pointwise.bias"]
    out["fc/weights"] = sd["head.fc.weight"].T
    out["fc/bias"] = sd["head.fc.bias"]
    return out


def _write_tfjs(folder, tensors: dict[str, np.ndarray], quantize: set[str]) -> tuple:
    """A TF.js manifest + one .bin shard; tensors named in ``quantize`` stored as uint8 with scale / min."""
    entries, blobs = [], []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        entry = {"name": name, "shape": list(arr.shape), "dtype": "float32"}
        if name in quantize:
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255 or 1.0
            q = np.round((arr - lo) / scale).astype(np.uint8)
            entry["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
            blobs.append(q.tobytes())
        else:
            blobs.append(arr.tobytes())
        entries.append(entry)
    (folder / "m.bin").write_bytes(b"".join(blobs))
    manifest = folder / "m-weights_manifest.json"
    manifest.write_text(json.dumps([{"paths": ["m.bin"], "weights": entries}]))
    return manifest


def test_registered_and_forward():
    info = model_info("faceapi_expression")
    assert info.family == "face_nonaligned" and info.input_size == (112, 112) and info.in_chans == 3
    model = create_model("faceapi_expression").eval()
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 7) and model.num_features == 256


def test_tfjs_round_trip_float_and_quantised(tmp_path):
    torch.manual_seed(0)
    model = FaceApiExpressionNet().eval()
    tensors = _to_tfjs(model)
    manifest = _write_tfjs(tmp_path, tensors, quantize={"fc/weights"})
    read = read_tfjs(manifest)
    assert set(read) == set(tensors)
    assert np.array_equal(read["dense1/conv2/bias"], tensors["dense1/conv2/bias"])
    step = (tensors["fc/weights"].max() - tensors["fc/weights"].min()) / 255
    assert np.abs(read["fc/weights"] - tensors["fc/weights"]).max() <= step / 2 + 1e-6  # dequantised
    again = FaceApiExpressionNet().eval()
    again.load_state_dict(faceapi_state_dict(_to_tfjs(model)))
    x = torch.randn(2, 3, 112, 112)
    assert torch.allclose(again(x), model(x), atol=1e-5)
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:-8])
    with pytest.raises(WeightsError, match="truncated"):
        read_tfjs(manifest)
    with pytest.raises(WeightsError, match="no tensor"):
        faceapi_state_dict({"fc/bias": np.zeros(7, np.float32)})


def test_real_npm_weights_read_a_smile(astronaut, detector):
    """The real face-api weights (fetched by `groupmood weights fetch faceapi_expression ...`) see the smile."""
    need = ("faceapi_expression_manifest", "faceapi_expression")
    if not all(weights.cached_path(n).is_file() for n in need):
        pytest.skip("face-api weights not in the cache (groupmood weights fetch faceapi_expression_manifest "
                    "faceapi_expression)")
    from groupmood.align import square_crops
    from groupmood.data.transforms import normalize

    model = load_faceapi_expression()
    faces = detector.detect([astronaut])[0]
    x = square_crops(astronaut, np.stack([f.box for f in faces]), size=112, grey=False)
    with torch.no_grad():
        x = normalize(torch.from_numpy(x).permute(0, 3, 1, 2), model_info("faceapi_expression"))
        p = torch.softmax(model(x), 1)
    assert FACEAPI_CLASSES[int(p[0].argmax())] == "happiness" and float(p[0].max()) > 0.5
