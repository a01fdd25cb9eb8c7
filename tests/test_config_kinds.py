"""Per-kind data sections (issue 13, item 6): each kind's options under data.<kind>, checked per kind."""
import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from groupmood.config import (
    DATA_KINDS,
    DEFAULTS,
    data_options,
    dump_config,
    load_config,
)
from groupmood.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ASSETS = Path(__file__).resolve().parents[1] / "src" / "groupmood" / "assets"


def test_resolved_config_holds_its_kind_section_complete(tmp_path):
    cfg = load_config(CONFIGS / "lfw_sphereface_compact.yaml")
    assert cfg["data"]["kind"] == "legend"
    assert cfg["data"]["legend"] == {**DATA_KINDS["legend"].options, "faces": "mtcnn"}
    assert not set(cfg["data"]) & (set(DATA_KINDS) - {"legend"})  # no other kind's options
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg  # a run folder's config reproduces the run
    assert len(DEFAULTS["data"]) <= 12


def test_a_typo_in_a_kind_section_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.legend\.cvs.*data\.legend\.csv"):
        load_config(None, ["data.kind=legend", "data.legend.cvs=x.csv"])
    with pytest.raises(ConfigError, match=r"data\.gaf\.mode.*no options of its own"):
        load_config(None, ["data.kind=gaf", "data.gaf.mode=majority"])
    with pytest.raises(ConfigError, match=r"data\.ferplus\.mdoe"):  # another kind's section is checked too
        load_config(None, ["data.kind=legend", "data.ferplus.mdoe=x"])
    with pytest.raises(ConfigError, match="data.modee"):
        load_config(None, ["data.modee=majority"])
    with pytest.raises(ConfigError, match="unknown data.kind"):
        load_config(None, ["data.kind=fer"])


def test_old_flat_keys_still_work(tmp_path):
    flat = load_config(None, ["data.kind=ferplus", "data.mode=crossentropy", "data.csv=x.csv"])
    assert flat["data"]["ferplus"] == {"mode": "crossentropy"}  # csv is legend's: ignored, as before
    section = load_config(None, ["data.ferplus.mode=crossentropy"])
    assert flat == section and data_options(flat["data"])["mode"] == "crossentropy"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"data": {"kind": "group_faces", "sources": [{"kind": "gaf", "root": "g"}],
                                            "top_k_faces": 3, "grey": True}}))
    view = data_options(load_config(old)["data"])
    assert view["top_k_faces"] == 3 and view["grey"] and view["sources"] == [{"kind": "gaf", "root": "g"}]


def test_shipped_models_flat_configs_resolve():
    """The assets' metadata hold the old flat config; evaluate reads them as a base."""
    for path in sorted(ASSETS.glob("*.safetensors")):
        if path.name == "regime_gate.safetensors":  # a gate head, not a model (tests/test_regime.py)
            continue
        with safe_open(str(path), framework="pt") as fh:
            old = json.loads(fh.metadata()["config"])
        cfg = load_config(None, base=old)
        kind = old["data"]["kind"]
        assert {k: v for k, v in data_options(cfg["data"]).items()} == {
            k: old["data"][k] for k in (*DEFAULTS["data"], *DATA_KINDS[kind].options) if k in old["data"]}


def test_every_data_kind_names_a_builder_that_exists():
    """The one registry of data kinds: each kind's builder imports and is callable."""
    import importlib

    for kind, spec in DATA_KINDS.items():
        module, _, attr = spec.builder.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), kind
