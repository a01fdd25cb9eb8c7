"""Group-level face data: every MTCNN face of a labelled photo, labelled with its photo's class.

Real photos (scikit-image's astronaut and coffee, the ``group`` sample of five people), the real
MTCNN through a face cache in a temporary folder (one detection per distinct photo for the module).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupmood.config import load_config
from groupmood.data import build_data
from groupmood.data.cache import CachedImage, FaceCache
from groupmood.data.group_faces import collect_faces, pool_by_photo, select_faces
from groupmood.data.splits import write_split
from groupmood.detect import Face
from groupmood.engine.evaluate import evaluate_checkpoint
from groupmood.engine.train import Trainer, train
from groupmood.errors import ConfigError, DatasetError, GroupmoodError
from groupmood.models import model_info

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ASSET = REPO / "src" / "groupmood" / "assets" / "face_nonaligned.safetensors"

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, coffee) -> dict[str, Path]:
    """Distinct real photos: astronaut (1 face) and its mirror, the group (5 faces) and its mirror, coffee (0)."""
    from groupmood.samples import sample_path

    try:
        group = sample_path("group")
    except GroupmoodError as exc:
        pytest.skip(f"the group sample photo is not available offline ({exc})")
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut).save(d / "astro.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(d / "astro_mirror.png")
    Image.fromarray(coffee).save(d / "coffee.png")
    shutil.copyfile(group, d / "group.jpg")
    Image.open(group).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "group_mirror.jpg", quality=95)
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def face_cache(photos, tmp_path_factory) -> Path:
    """A face cache holding every distinct photo (built once for the module)."""
    root = tmp_path_factory.mktemp("face_cache")
    FaceCache(root).build(list(photos.values()), progress=False)
    return root


def _place(root: Path, layout: dict[str, str], photos: dict[str, Path]) -> Path:
    for rel, stem in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[stem], root / rel)
    return root


def _csv_set(root: Path, photos: dict[str, Path]) -> Path:
    """An image_csv source of 8 photos (4 with a face per class pair), no split column."""
    rows = [("p0_group.jpg", "group", "positive"), ("p1_group.jpg", "group_mirror", "positive"),
            ("p2_astro.png", "astro", "negative"), ("p3_astro.png", "astro_mirror", "negative"),
            ("p4_coffee.png", "coffee", "neutral"), ("p5_astro.png", "astro", "neutral"),
            ("p6_group.jpg", "group_mirror", "negative"), ("p7_coffee.png", "coffee", "positive")]
    _place(root, {f"img/{name}": stem for name, stem, _ in rows}, photos)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"img/{n},{lab}\n" for n, _, lab in rows))
    return root


def _cfg(tmp_path: Path, face_cache: Path, *overrides: str) -> dict:
    return load_config(CONFIGS / "tiny.yaml", ["data.kind=group_faces", "data.root=null", "device=cpu",
                                               f"data.face_cache={face_cache}",
                                               f"data.split_dir={tmp_path / 'splits'}", *overrides])


# --------------------------------------------------------------------------- pure parts

def _entry(areas: list[float]) -> CachedImage:
    faces = [Face(np.array([0.0, 0.0, a, 1.0], np.float32), 0.99 - 0.01 * i, np.zeros((5, 2), np.float32))
             for i, a in enumerate(areas)]
    n = len(areas)
    aligned = np.stack([np.full((112, 96, 3), i, np.uint8) for i in range(n)]) if n else np.zeros((0, 112, 96, 3), np.uint8)
    grey = np.stack([np.full((48, 48), 100 + i, np.uint8) for i in range(n)]) if n else np.zeros((0, 48, 48), np.uint8)
    return CachedImage(f"k{n}", 100, 100, faces, aligned, grey)


def test_select_faces_keeps_the_k_largest_ties_in_detector_order():
    areas = [10.0, 50.0, 30.0, 50.0]
    assert select_faces(areas, None).tolist() == [1, 3, 2, 0]
    assert select_faces(areas, 2).tolist() == [1, 3]
    assert select_faces(areas, 9).tolist() == [1, 3, 2, 0]
    assert select_faces([], 3).tolist() == []


def test_collect_faces_picks_crops_by_model_and_skips_empty_photos():
    entries = [_entry([5.0, 20.0, 10.0]), _entry([]), _entry([7.0])]
    crops, photo, rank = collect_faces(entries, aligned=False, top_k=2)
    assert crops.shape == (3, 48, 48)
    assert photo.tolist() == [0, 0, 2] and rank.tolist() == [0, 1, 0]
    assert [int(c[0, 0]) for c in crops] == [101, 102, 100]  # faces 1 (area 20) and 2 (10) of photo 0
    crops, photo, _ = collect_faces(entries, aligned=True, top_k=None)
    assert crops.shape == (4, 112, 96, 3) and photo.tolist() == [0, 0, 0, 2]
    empty, photo, _ = collect_faces([_entry([])], aligned=True, top_k=None)
    assert empty.shape == (0, 112, 96, 3) and photo.size == 0


def test_pool_by_photo_averages_each_photos_faces():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.0, 0.0, 1.0], [0.6, 0.2, 0.2]])
    names, pooled, labels = pool_by_photo(probs, ["b", "b", "a", "b"], [2, 2, 0, 2])
    assert names.tolist() == ["b", "a"] and labels.tolist() == [2, 0]
    np.testing.assert_allclose(pooled, [[1.6 / 3, 0.4 / 3, 1.0 / 3], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------- with the real detector

def test_faces_inherit_the_photo_label_and_top_k(tmp_path, photos, face_cache, capsys):
    root = _place(tmp_path / "gaf", {"train/Positive/party.jpg": "group", "train/Negative/astro.png": "astro",
                                     "train/Neutral/cup.png": "coffee", "val/Negative/mirror.png": "astro_mirror"},
                  photos)
    info = model_info("resnet_tiny_48")
    bundle = build_data(_cfg(tmp_path, face_cache, "data.source=gaf", f"data.root={root}"), info, tmp_path,
                        ("train", "val"))
    out = capsys.readouterr().out
    assert "train: 3 photos, 2 with a face -> 6 faces" in out and "1 photos without a face left out" in out
    train_set = bundle.datasets["train"]
    assert bundle.classes == ("Negative", "Neutral", "Positive")
    assert len(train_set) == 6 and train_set.images.shape[1:] == (48, 48)
    by_photo = dict(zip(train_set.photos.tolist(), train_set.labels.tolist()))
    assert by_photo == {"gaf:train/Positive/party.jpg": 2, "gaf:train/Negative/astro.png": 0}
    assert (train_set.labels[train_set.photos == "gaf:train/Positive/party.jpg"] == 2).sum() == 5
    assert train_set.names[0] == "gaf:train/Negative/astro.png#0"
    assert bundle.info["counts"]["train"]["no_face"] == 1 and bundle.info["accuracy"] == "per face"
    x, y = train_set[0]
    assert x.shape == (1, 48, 48) and x.dtype == torch.uint8 and y == 0

    # only the 2 largest faces of the group photo, and they are its 2 largest boxes
    top2 = build_data(_cfg(tmp_path, face_cache, "data.source=gaf", f"data.root={root}", "data.top_k_faces=2"),
                      info, tmp_path, ("train",)).datasets["train"]
    assert len(top2) == 3 and (top2.photos == "gaf:train/Positive/party.jpg").sum() == 2
    entry = FaceCache(face_cache).get(photos["group"])
    areas = np.array([f.area for f in entry.faces])
    want = entry.grey48[np.argsort(-areas, kind="stable")[:2]]
    got = top2.images[top2.photos == "gaf:train/Positive/party.jpg"]
    np.testing.assert_array_equal(got, want)
    assert sorted(areas)[-2] > sorted(areas)[-3]  # the test photo really has a smaller third face

    # aligned models get the aligned crops (and grey ones on request)
    aligned = build_data(_cfg(tmp_path, face_cache, "data.source=gaf", f"data.root={root}", "model.name=sphereface_tiny"),
                         model_info("sphereface_tiny"), tmp_path, ("train",)).datasets["train"]
    assert aligned.images.shape[1:] == (112, 96, 3)
    assert not np.array_equal(aligned.images[..., 0], aligned.images[..., 1])
    grey = build_data(_cfg(tmp_path, face_cache, "data.source=gaf", f"data.root={root}", "data.grey=true"),
                      model_info("sphereface_tiny"), tmp_path, ("train",)).datasets["train"]
    assert np.array_equal(grey.images[..., 0], grey.images[..., 2])


def test_split_is_per_photo_and_reuses_the_global_split_files(tmp_path, photos, face_cache):
    src = _csv_set(tmp_path / "set", photos)
    info = model_info("resnet_tiny_48")
    sources = [f"data.sources=[{{kind: image_csv, root: {src}, name: mine}}]",
               "data.split={train: 0.5, val: 0.25, test: 0.25}"]
    bundle = build_data(_cfg(tmp_path, face_cache, *sources), info, tmp_path, ("train", "val", "test"))
    split_file = tmp_path / "splits" / "mine.json"
    assert split_file.is_file()
    doc = json.loads(split_file.read_text())
    photo_sets = {}
    for s, ds in bundle.datasets.items():
        photo_sets[s] = set(ds.photos.tolist())
        assert photo_sets[s] <= {f"mine:{n}" for n in doc["splits"][s]}
    assert not (photo_sets["train"] & photo_sets["val"] or photo_sets["train"] & photo_sets["test"]
                or photo_sets["val"] & photo_sets["test"])

    # an existing split file (written by the global branch, say) is what decides, whatever the fractions
    write_split(split_file, ["img/p0_group.jpg", "img/p1_group.jpg", "img/p2_astro.png", "img/p6_group.jpg",
                             "img/p4_coffee.png"],
                {"train": np.array([0, 2, 4]), "val": np.array([1]), "test": np.array([3])}, {"source": "mine"})
    again = build_data(_cfg(tmp_path, face_cache, *sources[:1], "data.split={train: 0.9, val: 0.1}"), info,
                       tmp_path, ("train", "val", "test"))
    assert set(again.datasets["train"].photos.tolist()) == {"mine:img/p0_group.jpg", "mine:img/p2_astro.png"}
    assert set(again.datasets["val"].photos.tolist()) == {"mine:img/p1_group.jpg"}
    assert set(again.datasets["test"].photos.tolist()) == {"mine:img/p6_group.jpg"}
    assert len(again.datasets["train"]) == 6 and len(again.datasets["val"]) == 5

    with pytest.raises(ConfigError, match="data.source"):
        build_data(_cfg(tmp_path, face_cache), info, tmp_path, ("train",))
    with pytest.raises(ConfigError, match="top_k_faces"):
        build_data(_cfg(tmp_path, face_cache, *sources[:1], "data.top_k_faces=0"), info, tmp_path, ("train",))
    with pytest.raises(DatasetError, match="face model"):
        build_data(_cfg(tmp_path, face_cache, *sources[:1]), model_info("mobilenet_v2"), tmp_path, ("train",))


def test_tiny_end_to_end_train_and_per_photo_evaluation(tmp_path, photos, face_cache):
    root = _place(tmp_path / "gaf", {"train/Positive/party.jpg": "group", "train/Negative/astro.png": "astro",
                                     "train/Negative/astro_mirror.png": "astro_mirror",
                                     "train/Neutral/cup.png": "coffee", "val/Positive/party.jpg": "group_mirror",
                                     "val/Negative/astro.png": "astro"}, photos)
    cfg = _cfg(tmp_path, face_cache, "data.source=gaf", f"data.root={root}", "train.batch_size=2",
               "train.epochs=1", "data.split={train: 0.8, val: 0.2}")
    summary = train(cfg, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 3  # 7 training faces, batches of 2
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train_loss"]) and 0.0 <= row["val_acc"] <= 1.0
    report = evaluate_checkpoint(tmp_path / "run" / "best.pt", split="val", progress=False)
    assert report["unit"] == "face" and report["n"] == 6
    assert report["per_photo"]["n"] == 2 and report["classes"] == ["Negative", "Neutral", "Positive"]


def test_recipe_starts_from_the_shipped_face_model_with_a_3_class_head(tmp_path, photos, face_cache):
    from safetensors.torch import load_file

    root = _place(tmp_path / "gaf", {"train/Positive/party.jpg": "group", "val/Negative/astro.png": "astro"},
                  photos)
    cfg = load_config(CONFIGS / "group_faces_nonaligned.yaml", [
        "data.source=gaf", f"data.root={root}", f"data.face_cache={face_cache}", f"data.split_dir={tmp_path}",
        f"init_from={ASSET}", "device=cpu", "train.batch_size=2", "train.progress=false"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.classes == ("Negative", "Neutral", "Positive")
    state, shipped = trainer.model.state_dict(), load_file(str(ASSET))
    assert state["head.fc.weight"].shape == (3, 256) and shipped["head.fc.weight"].shape == (8, 256)
    conv = next(k for k in shipped if k.endswith("weight") and shipped[k].ndim == 4)
    assert torch.equal(state[conv], shipped[conv].float())
