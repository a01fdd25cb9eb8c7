"""The shipped bundles: every weight file has a model card and its sha256, and the whole system runs
offline on real photos (a group, a portrait, a photo without a face).

The ``photo`` bundle (the default bundle's photo regime alone) has three face branches (one with the
group head fitted on multiemova-dev) and the global branch: on a photo without a face the face
branches abstain, and the global branch alone gives the label. The default bundle mixes it with the
crowd regime (tests/test_regime.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import SHIPPED_BUNDLES, GroupEmotionRecognizer, bundle_path, default_bundle_path
from groupmood.weights import sha256_file

ASSETS = Path(default_bundle_path()).parent


def test_every_shipped_weight_file_has_card_and_hash():
    """Every weight file in the assets belongs to a shipped bundle, which pins its sha256, and has a model card
    that states it; every shipped bundle says what it was chosen on."""
    listed: dict[str, str] = {}
    for name in SHIPPED_BUNDLES:
        bundle = yaml.safe_load(bundle_path(name).read_text())
        assert bundle["chosen_on"], f"the {name} bundle must say what its fusion weights were chosen on"
        listed.update({b["model"]: b["sha256"] for b in bundle["branches"]})
        if bundle.get("fusion", {}).get("kind") == "model":
            listed[bundle["fusion"]["model"]] = bundle["fusion"]["sha256"]
        if bundle.get("fusion", {}).get("kind") == "regime":
            listed[bundle["fusion"]["gate"]] = bundle["fusion"]["sha256"]
    files = sorted(ASSETS.glob("*.safetensors"))
    assert files, "no shipped weights"
    for f in files:
        card = f.with_suffix(".md")
        assert card.is_file(), f"{f.name} has no model card"
        assert sha256_file(f) in card.read_text(), f"{card.name} does not state the file's sha256"
        assert listed.get(f.name) == sha256_file(f), f"{f.name} is in no shipped bundle with its sha256"
        assert f.stat().st_size <= 10 * 2**20


@pytest.fixture(scope="module")
def recognizer(detector):
    return GroupEmotionRecognizer.from_bundle("photo", detector=detector, backend="torch")


def test_photo_bundle_end_to_end(recognizer, astronaut, coffee):
    from groupmood.samples import sample_path
    from groupmood.images import load_image

    group = load_image(sample_path("group"))
    results = recognizer.predict([group, astronaut, coffee])
    g, a, c = results
    for r in (g, a):
        assert r.label in GROUP_CLASSES
        assert np.isclose(float(np.sum(r.probs)), 1.0, atol=1e-4)
    # a group: the face branches decide; the whole-image branch is the fallback (weight 0) and is not run
    assert {n for n, b in g.branches.items() if b.spoke} == {"group", "nonaligned"}
    assert recognizer.fallback == ("global",) and not g.branches["global"].spoke
    assert len(g.faces) == 5 and not g.no_face
    assert len(a.faces) == 1 and recognizer.min_faces == 2  # one face is not a group: the global branch decides
    assert [n for n, b in a.branches.items() if b.spoke] == ["global"] and a.faces[0].label in GROUP_CLASSES
    np.testing.assert_allclose(a.probs, a.branches["global"].probs, atol=1e-6)
    assert g.label == "Positive"  # five people laughing into the camera
    assert set(recognizer.branches) == {"group", "aligned", "nonaligned", "global"}
    assert c.no_face and c.faces == [] and not c.abstained and c.label in GROUP_CLASSES
    assert [n for n, b in c.branches.items() if b.spoke] == ["global"]
    assert c.branches["global"].effective_weight == pytest.approx(1.0)
    np.testing.assert_allclose(c.probs, c.branches["global"].probs, atol=1e-6)


def test_folded_branches_score_as_the_shipped_files(recognizer, astronaut):
    """The pipeline folds BatchNorm into the convolutions; the scores stay those of the files."""
    from groupmood.pipeline import Branch

    faces = recognizer.detector.detect([astronaut])[0]
    assert faces
    for name, branch in recognizer.branches.items():
        assert branch.folded > 0, f"{name}: nothing folded"
        plain = Branch.from_file(branch.source, tta_flip=branch.tta_flip, grey=branch.grey, fold_bn=False)
        assert plain.folded == 0
        crops = branch.crops(astronaut, faces)
        np.testing.assert_allclose(branch.scores(crops), plain.scores(crops), atol=1e-4)


@pytest.mark.slow
def test_crowd_bundle_end_to_end(detector, astronaut, coffee):
    """``--bundle crowd``: the scene branch (the whole-image trunk with a head fitted on crowds and group photos)
    votes on every photo, the group head on photos with two or more faces; a photo without a face is labelled by
    the scene alone. It lists its fitting photos (crowd-dev and multiemova-dev for the heads)."""
    from groupmood.images import load_image
    from groupmood.pipeline import Bundle
    from groupmood.samples import sample_path

    rec = GroupEmotionRecognizer.from_bundle("crowd", detector=detector, backend="torch")
    assert rec.weights["scene"] > 0 and rec.branches["scene"].family == "global"
    g, c = rec.predict([load_image(sample_path("group")), coffee])
    assert len(g.faces) == 5 and g.branches["group"].spoke and g.branches["scene"].spoke
    assert c.no_face and [n for n, b in c.branches.items() if b.spoke] == ["scene"] and c.label in GROUP_CLASSES
    np.testing.assert_allclose(c.probs, c.branches["scene"].probs, atol=1e-6)
    listed = Bundle.load("crowd").chosen_on["fit_photos"]
    lines = [ln for ln in open(listed, encoding="utf-8").read().splitlines() if not ln.startswith("#")]
    assert sum(ln.endswith("\tgroup") for ln in lines) == 127 + 926


def test_shipped_bundles_by_name_on_the_command_line(tmp_path, coffee, capsys):
    from PIL import Image

    from groupmood.cli import main
    from groupmood.pipeline import Bundle

    assert bundle_path("crowd") == ASSETS / "bundle_crowd.yaml" and bundle_path(None) == default_bundle_path()
    assert bundle_path("default") == default_bundle_path() and bundle_path("my.yaml").name == "my.yaml"
    Image.fromarray(coffee).save(tmp_path / "cup.png")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(tmp_path / "cup.png"), "--bundle", "crowd", "-o", str(out), "--backend", "torch",
                 "--no-progress"]) == 0
    assert "scene" in json.loads(out.read_text())["branches"]
    with pytest.raises(Exception, match="default, photo, crowd"):
        Bundle.load("crowds")
