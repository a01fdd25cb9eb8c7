"""The dlib ResNet face descriptor (face-api.js's TF.js port): shapes, the name mapping through a TF.js
file, and the real npm weights telling people apart on real photos."""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest
import torch
from conftest import shared_path
from test_faceapi import _write_tfjs

from groupmood import weights
from groupmood.align import square_crops
from groupmood.errors import ConfigError, WeightsError
from groupmood.images import load_image
from groupmood.models.converters import (
    faceapi_identity_block_names,
    faceapi_identity_state_dict,
    load_faceapi_identity,
    load_pretrained,
    read_tfjs,
)
from groupmood.models.faceapi_identity import FaceIdentityNet, normalize_identity
from groupmood.samples import sample_path


def _to_tfjs(net: FaceIdentityNet) -> dict[str, np.ndarray]:
    """The inverse of faceapi_identity_state_dict: the net's weights under face-api's names and TF layouts."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}

    def scaled(prefix: str, dst: str) -> dict[str, np.ndarray]:
        return {f"{dst}/conv/filters": sd[f"{prefix}.conv.weight"].transpose(2, 3, 1, 0),
                f"{dst}/conv/bias": sd[f"{prefix}.conv.bias"],
                f"{dst}/scale/weights": sd[f"{prefix}.weight"], f"{dst}/scale/biases": sd[f"{prefix}.bias"]}

    out = scaled("trunk.stem", "conv32_down")
    for i, name in enumerate(faceapi_identity_block_names()):
        out |= scaled(f"trunk.blocks.{i}.conv1", f"{name}/conv1") | scaled(f"trunk.blocks.{i}.conv2", f"{name}/conv2")
    out["fc"] = sd["fc.weight"].T
    return out


def _real_net() -> FaceIdentityNet:
    if not all(weights.cached_path(n).is_file() for n in ("faceapi_identity_manifest", "faceapi_identity")):
        pytest.skip("face-identity weights not in the cache (groupmood weights fetch faceapi_identity_manifest "
                    "faceapi_identity)")
    return load_faceapi_identity()


def _descriptors(net: FaceIdentityNet, image: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    crops = square_crops(image, boxes, size=150, margin=margin, grey=False)
    with torch.no_grad():
        return net(normalize_identity(torch.from_numpy(crops).permute(0, 3, 1, 2).float())).numpy()


def test_shapes_and_the_odd_sized_residual_down():
    net = FaceIdentityNet().eval()
    x = torch.randn(2, 3, 150, 150)
    assert net(x).shape == (2, 128) and net.forward_features(x).shape == (2, 256)
    assert len(faceapi_identity_block_names()) == 14 and sum(p.numel() for p in net.parameters()) == 5_614_592  # "about 5.6M"


def test_tfjs_round_trip(tmp_path):
    torch.manual_seed(0)
    net = FaceIdentityNet().eval()
    tensors = _to_tfjs(net)
    assert len(tensors) == 117  # as many as the npm package's manifest lists
    manifest = _write_tfjs(tmp_path, tensors, quantize=set())
    again = FaceIdentityNet().eval()
    again.load_state_dict(faceapi_identity_state_dict(read_tfjs(manifest)))
    x = torch.randn(2, 3, 150, 150)
    assert torch.allclose(again(x), net(x), atol=1e-5)
    del tensors["conv128_1/conv2/scale/biases"]
    with pytest.raises(WeightsError, match="conv128_1/conv2/scale/biases"):
        faceapi_identity_state_dict(tensors)


def test_real_weights_tell_the_five_people_apart(detector):
    """Each of the five laughing people is nearer to their own face cut another way than to anyone else."""
    net = _real_net()
    group = load_image(sample_path("group"))
    boxes = np.stack([f.box for f in detector.detect([group])[0]])
    assert len(boxes) == 5
    a, b = _descriptors(net, group, boxes), _descriptors(net, group, boxes, margin=0.1)
    own = np.linalg.norm(a - b, axis=1)
    others = np.linalg.norm(a[:, None] - a[None], axis=2)[~np.eye(5, dtype=bool)]
    assert own.max() < others.min()
    assert own.max() < 0.4 and np.median(others) > 0.6  # dlib's same-person distance is about 0.6


@pytest.mark.shared
def test_real_weights_verify_lfw_people(detector):
    """Same person under 0.6, different people over it, on LFW photos of 40 people (two photos each)."""
    net = _real_net()
    root = shared_path("lfw-expressions", "images")
    by_person = collections.defaultdict(list)
    for f in sorted(root.iterdir()):
        by_person[re.sub(r"_\d+\.\w+$", "", f.name)].append(f)
    people = [p for p, files in by_person.items() if len(files) >= 2][:40]
    desc, who = [], []
    for person in people:
        for f in by_person[person][:2]:
            image = load_image(f)
            faces = detector.detect([image])[0]
            if faces:
                desc.append(_descriptors(net, image, max(faces, key=lambda x: x.area).box[None])[0])
                who.append(person)
    d = np.linalg.norm(np.array(desc)[:, None] - np.array(desc)[None], axis=2)
    same = np.array(who)[:, None] == np.array(who)[None]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    right = (d[same & upper] < 0.6).sum() + (d[~same & upper] >= 0.6).sum()
    assert right / upper.sum() > 0.88  # 92.7% measured on these crops (not dlib's aligned chips)


def test_identity_initialised_aligned_branch(tmp_path):
    """identity_resnet_aligned: registered for aligned faces (150x128), its trunk loaded from the descriptor."""
    from groupmood.data.transforms import normalize
    from groupmood.models import create_model, model_info

    info = model_info("identity_resnet_aligned")
    assert info.family == "face_aligned" and info.input_size == (150, 128) and info.in_chans == 3
    model = create_model("identity_resnet_aligned", num_classes=8).eval()
    x = torch.randint(0, 256, (2, 3, 150, 128), dtype=torch.uint8)
    assert model(normalize(x, info)).shape == (2, 8)
    assert torch.allclose(normalize(x, info), normalize_identity(x.float()), atol=1e-6)  # the recipe's input
    net = _real_net()
    load_pretrained(model, "faceapi_identity", verbose=False)
    with torch.no_grad():
        assert torch.equal(model.forward_features(normalize(x, info)), net.trunk(normalize_identity(x.float())))
    assert load_pretrained(model, "none").loaded == 0
    with pytest.raises(ConfigError, match="faceapi_identity"):
        load_pretrained(model, "imagenet")
