"""The shipped default bundle: every weight file has a model card and its sha256, and the whole
system runs offline on real photos (a group, a portrait, a photo without a face).

The default bundle has three face branches (one with the group head fitted on multiemova-dev) and the
global branch: on a photo without a face the
face branches abstain, and the global branch alone gives the label."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import GroupEmotionRecognizer, default_bundle_path
from groupmood.weights import sha256_file

ASSETS = Path(default_bundle_path()).parent


def test_every_shipped_weight_file_has_card_and_hash():
    bundle = yaml.safe_load(default_bundle_path().read_text())
    files = sorted(ASSETS.glob("*.safetensors"))
    assert files, "no shipped weights"
    listed = {b["model"]: b for b in bundle["branches"]}
    for f in files:
        card = f.with_suffix(".md")
        assert card.is_file(), f"{f.name} has no model card"
        assert sha256_file(f) in card.read_text(), f"{card.name} does not state the file's sha256"
        assert f.name in listed and listed[f.name]["sha256"] == sha256_file(f)
        assert f.stat().st_size <= 10 * 2**20
    assert bundle["chosen_on"], "the bundle must say what its fusion weights were chosen on"


@pytest.fixture(scope="module")
def recognizer(detector):
    return GroupEmotionRecognizer.default(detector=detector, backend="torch")


def test_default_bundle_end_to_end(recognizer, astronaut, coffee):
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
        plain = Branch.from_file(branch.source, tta_flip=branch.tta_flip, grey=branch.grey, fuse=False)
        assert plain.folded == 0
        crops = branch.crops(astronaut, faces)
        np.testing.assert_allclose(branch.scores(crops), plain.scores(crops), atol=1e-4)
