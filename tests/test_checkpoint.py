"""One checkpoint reader (groupmood.checkpoint) and each model's input recipe stored once (registry + file)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from groupmood.checkpoint import (
    load_model,
    read_checkpoint,
    read_state_dict,
    save_model,
)
from groupmood.data.transforms import eval_transform, normalize, train_transform
from groupmood.errors import WeightsError
from groupmood.models import create_model, model_info
from groupmood.models.registry import FAMILY_RECIPES, RECIPE_KEYS, register_model

ASSETS = Path(__file__).resolve().parents[1] / "src" / "groupmood" / "assets"


def test_state_dict_wrappers_and_prefixes(tmp_path):
    state = {"a.weight": torch.ones(2), "b.bias": torch.zeros(3)}
    for name, obj in {"plain.pt": state, "wrapped.pth": {"state_dict": state, "epoch": 3, "arch": "x"},
                      "model.pt": {"model": state, "config": {"k": 1}},
                      "dp.pth": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}.items():
        torch.save(obj, tmp_path / name)
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items()), name
    save_file(state, str(tmp_path / "s.safetensors"))
    assert set(read_state_dict(tmp_path / "s.safetensors")) == set(state)


def test_errors_name_the_file_and_the_problem(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 not a zip")
    cases = {"list.pt": "expected a state dict", "empty.pt": "holds no tensors",
             "cut.safetensors": "not a readable safetensors", "cut.pt": "not a loadable"}
    for name, what in cases.items():
        with pytest.raises(WeightsError, match=what) as err:
            read_state_dict(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    save_file({"w": torch.ones(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(WeightsError, match="not a groupmood model file"):
        read_checkpoint(tmp_path / "bare.safetensors")
    torch.save({"w": torch.ones(1)}, tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="not a groupmood training checkpoint"):
        read_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="not found"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_shipped_files_load_with_their_recipe_or_their_registry_entry():
    """The older shipped files predate stored recipes: each gets the registered recipe of the model it names. The
    newer ones (the crowd bundle's) carry their recipe, which is what they load with."""
    legacy = 0
    for path in sorted(ASSETS.glob("*.safetensors")):
        if path.name == "regime_gate.safetensors":  # a gate head, not a model (tests/test_regime.py)
            continue
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata()
        model, meta = load_model(path)
        if "recipe" in raw:
            assert meta["recipe"] == json.loads(raw["recipe"])
        else:
            legacy += 1
            assert meta["info"] == model_info(json.loads(raw["model"]))
        assert meta["recipe"]["classes"] == json.loads(raw["classes"])
        assert not model.training
    assert legacy == 4  # the photo bundle's four files, shipped as they are


def test_export_stores_arch_and_recipe_and_loads_from_them_alone(tmp_path):
    model = create_model("resnet_tiny_48", num_classes=3, head="softmax", drop_rate=0.0)
    info = model_info("resnet_tiny_48").with_recipe({"tta_flip": True, "pooling": "top2"})
    arch = {"name": "resnet_tiny_48", "head": "softmax", "margin_m": 4, "drop_rate": 0.0, "kwargs": {}}
    out = save_model(model, {"arch": arch, "classes": ["Negative", "Neutral", "Positive"], "info": info},
                     tmp_path / "m.safetensors")
    with safe_open(str(out), framework="pt") as fh:
        raw = fh.metadata()
    assert "config" not in raw and json.loads(raw["arch"]) == arch
    recipe = json.loads(raw["recipe"])
    assert set(recipe) == set(RECIPE_KEYS) and recipe["pooling"] == "top2" and recipe["tta_flip"] is True
    again, meta = load_model(out)
    assert meta["info"].pooling == "top2" and meta["info"].tta_flip and meta["classes"] == ["Negative", "Neutral",
                                                                                            "Positive"]
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(again(x), model.eval()(x), atol=2e-2, rtol=2e-2)
    bad = {**recipe, "crop": "zoom"}
    with pytest.raises(ValueError, match="crop"):
        model_info("resnet_tiny_48").with_recipe(bad)


def test_transforms_follow_the_recipe():
    """Size, resize and mean / std come from the model's entry; a registration states only what differs."""
    lite, mobile = model_info("efficientnet_lite0"), model_info("mobilenet_v2")
    assert mobile.mean == FAMILY_RECIPES["global"]["mean"] and lite.mean == (127.0, 127.0, 127.0)
    x = torch.full((1, 3, 2, 2), 127.0)
    assert torch.allclose(normalize(x, lite), torch.zeros_like(x))
    img = torch.zeros(3, 300, 400, dtype=torch.uint8)
    assert tuple(eval_transform(lite)(img).shape) == (3, 224, 224)
    assert tuple(train_transform(lite, {"global_strong": False})(img).shape) == (3, 224, 224)
    small = lite.with_recipe({"input_size": [160, 128], "resize": 192})
    assert tuple(eval_transform(small)(img).shape) == (3, 160, 128)
    with pytest.raises(ValueError, match="unknown recipe key"):
        register_model("global", colour="rgb")
    with pytest.raises(ValueError, match="mean / std"):
        model_info("resnet_tiny_48").with_recipe({"in_chans": 3})
