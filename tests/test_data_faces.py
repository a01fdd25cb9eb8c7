"""Face datasets: FERPlus label cleaning and modes, class map, folder / legend readers, splits, transforms."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from groupmood.config import load_config
from groupmood.data import build_data
from groupmood.data.face_sources import read_folder, read_legend
from groupmood.data.faces import ClassMap, FaceDataset, build_face_data
from groupmood.data.ferplus import ferplus_distribution, ferplus_targets, read_ferplus
from groupmood.data.splits import group_split, read_split, resolve_split, write_split
from groupmood.data.transforms import BatchAffine, fit_face, normalize, train_transform
from groupmood.errors import DatasetError
from groupmood.labels import FERPLUS_EMOTIONS, GROUP_CLASSES
from groupmood.models import model_info

SHARED_FERPLUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ferplus"

# Rows in the exact format of FERPlus label.csv: file, box, 10 vote counts
# (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF).
ROWS = [
    ("fer0000001.png", [4, 0, 0, 0, 1, 0, 0, 4, 1, 0]),   # tie after outlier removal: no majority
    ("fer0000002.png", [1, 0, 0, 1, 0, 2, 0, 6, 0, 0]),   # contempt 6 of 8 kept votes
    ("fer0000003.png", [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]),   # 50/50 neutral / happiness
    ("fer0000004.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # clear happiness
    ("fer0000005.png", [2, 0, 0, 0, 0, 0, 0, 0, 6, 2]),   # unknown on top: always dropped
    ("fer0000006.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face: always dropped
    ("fer0000007.png", [5, 3, 2, 0, 0, 0, 0, 0, 0, 0]),   # 5 + 3 reach 75 %
    ("fer0000008.png", [0, 0, 7, 3, 0, 0, 0, 0, 0, 0]),   # surprise majority
]


def _write_ferplus(root: Path, rows=ROWS, folders=("FER2013Train", "FER2013Valid", "FER2013Test")) -> Path:
    rng = np.random.default_rng(0)
    for folder in folders:
        d = root / folder
        d.mkdir(parents=True)
        lines = []
        for name, votes in rows:
            cv2.imwrite(str(d / name), rng.integers(0, 256, (48, 48), dtype=np.uint8))
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(str(v) for v in votes))
        (d / "label.csv").write_text("\n".join(lines) + "\n")
    return root


def _reference_process(emotion_raw: list[float], mode: str) -> list[float]:
    """Literal transcription of the FERPlus reference ``_process_data`` (list based), for comparison."""
    size = len(emotion_raw)
    emotion_unknown = [0.0] * size
    emotion_unknown[-2] = 1.0
    for i in range(size):
        if emotion_raw[i] < 1.0 + sys.float_info.epsilon:
            emotion_raw[i] = 0.0
    sum_list = sum(emotion_raw)
    emotion = [0.0] * size
    if mode == "majority":
        maxval = max(emotion_raw)
        if maxval > 0.5 * sum_list:
            emotion[int(np.argmax(emotion_raw))] = maxval
        else:
            emotion = emotion_unknown
    else:
        sum_part, count, valid_emotion = 0, 0, True
        while sum_part < 0.75 * sum_list and count < 3 and valid_emotion:
            maxval = max(emotion_raw)
            for i in range(size):
                if emotion_raw[i] == maxval:
                    emotion[i] = maxval
                    emotion_raw[i] = 0
                    sum_part += emotion[i]
                    count += 1
                    if i >= 8:
                        valid_emotion = False
                        if sum(emotion) > maxval:
                            emotion[i] = 0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * sum_list or count > 3:
            emotion = emotion_unknown
    total = sum(emotion)
    return [float(e) / total for e in emotion]


def _reference_targets(votes: np.ndarray, mode: str) -> tuple[list[int], list[list[float]]]:
    keep, dists = [], []
    for i, row in enumerate(votes):
        emotion = _reference_process([float(v) for v in row], mode)
        if int(np.argmax(emotion)) < 8:
            e = emotion[:-2]
            keep.append(i)
            dists.append([x / sum(e) for x in e])
    return keep, dists


def _face_cfg(root: Path, kind: str = "ferplus", **data) -> dict:
    return load_config(None, [f"data.kind={kind}", f"data.root={root}", "train.progress=false",
                              "model.name=resnet_tiny_48", *[f"data.{k}={v}" for k, v in data.items()]])


# --------------------------------------------------------------------------- FERPlus labels

@pytest.mark.parametrize("votes, mode, expected", [
    ([4, 0, 0, 0, 1, 0, 0, 4, 1, 0], "majority", None),
    ([4, 0, 0, 0, 1, 0, 0, 4, 1, 0], "probability", {"neutral": 0.5, "contempt": 0.5}),
    ([1, 0, 0, 1, 0, 2, 0, 6, 0, 0], "majority", {"contempt": 1.0}),
    ([1, 0, 0, 1, 0, 2, 0, 6, 0, 0], "crossentropy", {"contempt": 1.0}),
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "majority", None),
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "crossentropy", {"neutral": 0.5, "happiness": 0.5}),
    ([2, 0, 0, 0, 0, 0, 0, 0, 6, 2], "majority", None),
    ([2, 0, 0, 0, 0, 0, 0, 0, 6, 2], "probability", None),
    ([0, 4, 0, 0, 0, 0, 0, 0, 4, 2], "probability", None),            # unknown tied with the top: <= 50 % kept
    ([3, 3, 2, 2, 0, 0, 0, 0, 0, 0], "crossentropy", None),           # four emotions tie in: too many
    ([5, 3, 2, 0, 0, 0, 0, 0, 0, 0], "crossentropy", {"neutral": 5 / 8, "happiness": 3 / 8}),
    ([5, 4, 3, 2, 2, 2, 2, 2, 2, 2], "crossentropy", None),           # three emotions hold <= 50 %
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "majority", None),               # only single votes
])
def test_ferplus_distribution_cases(votes, mode, expected):
    dist = ferplus_distribution(votes, mode)
    if expected is None:
        assert dist is None
        return
    want = np.zeros(8)
    for name, p in expected.items():
        want[FERPLUS_EMOTIONS.index(name)] = p
    np.testing.assert_allclose(dist, want, atol=1e-12)


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy"])
def test_ferplus_targets_match_reference_transcription(mode):
    rng = np.random.default_rng(1)
    votes = np.stack([rng.multinomial(10, p) for p in rng.dirichlet(np.full(10, 0.4), size=400)]).astype(float)
    votes = np.concatenate([votes, np.asarray([v for _, v in ROWS], dtype=float)])
    keep, dist = ferplus_targets(votes, mode)
    ref_keep, ref_dist = _reference_targets(votes, mode)
    assert keep.tolist() == ref_keep
    np.testing.assert_allclose(dist, np.asarray(ref_dist, dtype=np.float32).reshape(-1, 8), atol=1e-6)


def test_read_ferplus_parses_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    root = _write_ferplus(tmp_path / "ferplus")
    raw = read_ferplus(root, "train", progress=False)
    assert raw["images"].shape == (len(ROWS), 48, 48) and raw["images"].dtype == np.uint8
    assert raw["names"].tolist() == [n for n, _ in ROWS]
    np.testing.assert_array_equal(raw["votes"], np.asarray([v for _, v in ROWS], dtype=np.float32))
    expected = cv2.imread(str(root / "FER2013Train" / ROWS[3][0]), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(raw["images"][3], expected)
    assert len(list((tmp_path / "home" / "datasets").glob("ferplus-train-*.npz"))) == 1
    (root / "FER2013Train" / ROWS[0][0]).unlink()  # the cache answers without the files
    np.testing.assert_array_equal(read_ferplus(root, "train", progress=False)["images"], raw["images"])
    csv_path = root / "FER2013Train" / "label.csv"
    csv_path.write_text(csv_path.read_text() + "\n")  # a changed label file invalidates the cache
    with pytest.raises(DatasetError, match="fer0000001.png"):
        read_ferplus(root, "train", progress=False)
    with pytest.raises(DatasetError, match="data.root"):
        read_ferplus(tmp_path / "nowhere", "val", cache=False)


def test_read_ferplus_rejects_malformed_rows(tmp_path):
    root = _write_ferplus(tmp_path / "ferplus", folders=("FER2013Valid",))
    (root / "FER2013Valid" / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,2,3\n')
    with pytest.raises(DatasetError, match="label.csv:1"):
        read_ferplus(root, "val", cache=False)


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy"])
def test_ferplus_modes_build_datasets(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    root = _write_ferplus(tmp_path / "ferplus")
    cfg = _face_cfg(root, mode=mode)
    bundle = build_face_data(cfg, model_info("resnet_tiny_48"), tmp_path, ("train", "val"))
    train, val = bundle.datasets["train"], bundle.datasets["val"]
    assert bundle.classes == FERPLUS_EMOTIONS
    # validation is always majority: rows 2, 4, 8 survive
    assert val.names.tolist() == ["fer0000002.png", "fer0000004.png", "fer0000008.png"]
    assert val.targets.tolist() == [FERPLUS_EMOTIONS.index(c) for c in ("contempt", "happiness", "surprise")]
    if mode == "majority":
        assert train.targets.ndim == 1 and len(train) == 3
        return
    assert train.names.tolist() == ["fer0000001.png", "fer0000002.png", "fer0000003.png", "fer0000004.png",
                                    "fer0000007.png", "fer0000008.png"]
    np.testing.assert_allclose(train.targets.sum(axis=1), 1.0, atol=1e-6)
    x, y = train[2]
    assert x.shape == (1, 48, 48) and x.dtype == torch.uint8
    if mode == "crossentropy":
        assert isinstance(y, torch.Tensor) and y.shape == (8,)
        return
    assert isinstance(y, int)

    def draws(epoch: int) -> list[int]:
        train.set_epoch(epoch)
        return [train[i][1] for i in range(len(train))]

    a, b = draws(0), draws(0)
    assert a == b  # seeded by (seed, epoch)
    allowed = [set(np.flatnonzero(t > 0)) for t in train.targets]
    samples = [draws(e) for e in range(40)]
    assert all(s[i] in allowed[i] for s in samples for i in range(len(train)))
    assert len({s[2] for s in samples}) == 2  # the 50/50 image gets both labels over the epochs


def test_ferplus_valence_target(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    root = _write_ferplus(tmp_path / "ferplus")
    cfg = _face_cfg(root, mode="crossentropy", target="valence", surprise="Neutral")
    bundle = build_face_data(cfg, model_info("resnet_tiny_48"), tmp_path, ("train", "val"))
    assert bundle.classes == GROUP_CLASSES
    t = bundle.datasets["train"].targets
    assert t.shape == (6, 3)
    np.testing.assert_allclose(t[0], [0.5, 0.5, 0.0])         # neutral + contempt
    np.testing.assert_allclose(t[-1], [0.3, 0.7, 0.0], atol=1e-6)  # surprise .7 -> Neutral here
    assert bundle.datasets["val"].targets.tolist() == [0, 2, 1]


# --------------------------------------------------------------------------- class map

def test_class_map():
    expr = ClassMap.from_config({"target": "expressions"})
    assert expr.classes == FERPLUS_EMOTIONS
    assert expr.index(["happy", "Sadness", "neutral"]).tolist() == [1, 3, 0]
    with pytest.raises(DatasetError, match="'bored'"):
        expr.index(["bored"])
    sub = ClassMap.from_config({"target": "expressions", "classes": ["happy", "sad"]})
    assert sub.classes == ("happiness", "sadness")
    np.testing.assert_allclose(sub.project(np.asarray([[0.5, 0.25, 0, 0.25, 0, 0, 0, 0]])), [[0.5, 0.5]])
    val = ClassMap.from_config({"target": "valence", "surprise": "Negative"})
    assert val.classes == GROUP_CLASSES
    assert val.index(["happiness", "surprise", "neutral", "contempt", "Positive"]).tolist() == [2, 0, 1, 0, 2]
    with pytest.raises(DatasetError, match="data.target"):
        ClassMap.from_config({"target": "moods"})
    with pytest.raises(DatasetError, match="data.classes"):
        ClassMap.from_config({"classes": ["joy", "boredom"]})


# --------------------------------------------------------------------------- folder / legend / npz

def _write_folder(root: Path, subjects=("S010", "S011", "S014", "S022", "S026"), classes=("happy", "sadness", "anger"),
                  size: int = 48) -> Path:
    rng = np.random.default_rng(2)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for s in subjects:
            for k in range(2):
                cv2.imwrite(str(root / cls / f"{s}_00{k}_0000001{k}.png"),
                            rng.integers(0, 256, (size, size), dtype=np.uint8))
    (root / "happy" / "notes.txt").write_text("not an image")
    return root


def test_read_folder_with_subject_groups(tmp_path):
    root = _write_folder(tmp_path / "ck", size=64)
    table = read_folder(root, (48, 48), 1, group_regex=r"^(S\d+)", cache=False, progress=False)
    assert table.images.shape == (30, 48, 48)
    assert set(table.labels) == {"happiness", "sadness", "anger"}
    assert set(table.groups) == {"S010", "S011", "S014", "S022", "S026"}
    assert table.names[0] == "anger/S010_000_00000010.png"
    rgb = read_folder(root, (112, 96), 3, cache=False, progress=False)
    assert rgb.images.shape == (30, 112, 96, 3)
    assert len(set(rgb.groups)) == 30  # no regex: every image is its own group
    with pytest.raises(DatasetError, match="class sub-folders"):
        read_folder(tmp_path, (48, 48), 1, cache=False)


def test_read_legend_person_groups_and_conflicts(tmp_path):
    root = tmp_path / "lfw"
    (root / "images").mkdir(parents=True)
    rows = [("302", "George_W_Bush_0001.jpg", "happiness"), ("302", "George_W_Bush_0012.jpg", "NEUTRAL"),
            ("dwdii", "Avinash_30.jpg", "surprise"), ("dwdii", "Avinash_30.jpg", "sadness"),
            ("dwdii", "Avinash_31.jpg", "sadness"), ("628", "facial-expressions_2868582k.jpg", "anger")]
    rng = np.random.default_rng(3)
    for _, name, _ in rows:
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
    (root / "legend.csv").write_text("user.id,image,emotion\n" + "\n".join(",".join(r) for r in rows) + "\n")
    table = read_legend(root, (112, 96), 3, cache=False, progress=False)
    assert table.names.tolist() == ["George_W_Bush_0001.jpg", "George_W_Bush_0012.jpg", "Avinash_31.jpg",
                                    "facial-expressions_2868582k.jpg"]
    assert table.labels.tolist() == ["happiness", "neutral", "sadness", "anger"]
    assert table.groups.tolist() == ["George_W_Bush", "George_W_Bush", "Avinash", "facial-expressions_2868582k"]
    assert table.images.shape == (4, 112, 96, 3)
    (root / "images" / "Avinash_31.jpg").unlink()
    with pytest.raises(DatasetError, match="missing"):
        read_legend(root, (48, 48), 1, cache=False)


def test_npz_source_and_all_split(tmp_path):
    path = tmp_path / "crops.npz"
    images = np.random.default_rng(4).integers(0, 256, (6, 112, 96, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.asarray(["happy", "neutral", "sad"] * 2),
             groups=np.asarray(["a", "a", "b", "b", "c", "c"]))
    cfg = _face_cfg(path, kind="npz")
    bundle = build_data(cfg, model_info("sphereface_tiny"), tmp_path, ("all",))
    ds = bundle.datasets["all"]
    assert len(ds) == 6 and ds[0][0].shape == (3, 112, 96)
    assert ds.labels.tolist() == [1, 0, 3, 1, 0, 3]
    grey = build_data(cfg, model_info("resnet_tiny_48"), tmp_path, ("all",)).datasets["all"]
    assert grey[0][0].shape == (1, 48, 48)


# --------------------------------------------------------------------------- splits

def test_group_split_is_disjoint_deterministic_and_stratified():
    rng = np.random.default_rng(5)
    groups = np.asarray([f"p{rng.integers(0, 120)}" for _ in range(1500)])
    labels = rng.integers(0, 4, 1500)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = group_split(groups, labels, fractions, seed=3)
    b = group_split(groups, labels, fractions, seed=3)
    c = group_split(groups, labels, fractions, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(1500))
    sets = {k: set(groups[v]) for k, v in a.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    for k, f in fractions.items():
        assert abs(len(a[k]) / 1500 - f) < 0.05
        for cls in range(4):
            share = (labels[a[k]] == cls).sum() / (labels == cls).sum()
            assert abs(share - f) < 0.08


def test_split_file_written_and_reused(tmp_path):
    root = _write_folder(tmp_path / "ck")
    cfg = _face_cfg(root, kind="folder", group_regex=r"^(S\d+)", cache="false")
    cfg["data"]["split"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    info = model_info("resnet_tiny_48")
    first = build_face_data(cfg, info, tmp_path / "run", ("train", "val", "test"))
    split = read_split(tmp_path / "run" / "split.json")
    assert sum(len(v) for v in split.values()) == 30
    subjects = {k: {n.split("/")[1][:4] for n in v} for k, v in split.items()}
    assert not (subjects["train"] & subjects["test"]) and not (subjects["train"] & subjects["val"])
    doc = json.loads((tmp_path / "run" / "split.json").read_text())
    doc["splits"]["test"], doc["splits"]["train"] = doc["splits"]["train"], doc["splits"]["test"]
    (tmp_path / "run" / "split.json").write_text(json.dumps(doc))
    swapped = build_face_data(cfg, info, tmp_path / "run", ("train", "test"))
    assert swapped.datasets["test"].names.tolist() == first.datasets["train"].names.tolist()
    write_split(tmp_path / "other.json", ["x.png"], {"train": np.asarray([0])}, {})
    cfg["data"]["split_file"] = str(tmp_path / "other.json")
    with pytest.raises(DatasetError, match="x.png"):
        build_face_data(cfg, info, tmp_path / "run", ("train",))


def test_evaluation_never_makes_a_new_split(tmp_path):
    """Asking for held-out parts only (evaluation) without the run's split file is an error that names the
    file, and nothing is written: a new split would put training persons in the test part."""
    root = _write_folder(tmp_path / "ck")
    cfg = _face_cfg(root, kind="folder", group_regex=r"^(S\d+)", cache="false")
    cfg["data"]["split"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    info = model_info("resnet_tiny_48")
    with pytest.raises(DatasetError, match="split.json"):
        build_face_data(cfg, info, tmp_path / "elsewhere", ("test",))
    assert not (tmp_path / "elsewhere" / "split.json").exists()
    trained = build_face_data(cfg, info, tmp_path / "run", ("train", "test"))
    cfg["data"]["split_file"] = str(tmp_path / "run" / "split.json")
    held_out = build_face_data(cfg, info, tmp_path / "elsewhere", ("test",))
    assert held_out.datasets["test"].names.tolist() == trained.datasets["test"].names.tolist()
    assert len(build_face_data(cfg | {"data": {**cfg["data"], "split_file": None}}, info, tmp_path / "elsewhere",
                               ("all",)).datasets["all"]) == 30
    # a sample the data no longer has (a face no longer found) is left out at evaluation, with a warning,
    # while training on that split file still refuses it
    doc = json.loads((tmp_path / "run" / "split.json").read_text())
    doc["splits"]["test"].append("gone.png")
    (tmp_path / "run" / "split.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="gone.png"):
        again = build_face_data(cfg, info, tmp_path / "elsewhere", ("test",))
    assert again.datasets["test"].names.tolist() == trained.datasets["test"].names.tolist()
    with pytest.raises(DatasetError, match="gone.png"):
        build_face_data(cfg, info, tmp_path / "elsewhere", ("train", "test"))


def test_resolve_split_rejects_repeated_names(tmp_path):
    from groupmood.data.face_sources import FaceTable

    table = FaceTable(np.zeros((2, 48, 48), np.uint8), np.asarray(["a", "a"]), np.asarray(["happiness"] * 2),
                      np.asarray(["a", "a"]))
    with pytest.raises(DatasetError, match="repeated"):
        resolve_split(table, np.zeros(2, np.int64), {"split": {"train": 1.0}}, tmp_path, "t")


# --------------------------------------------------------------------------- transforms

def test_fit_face_keeps_height_and_width_apart():
    img = np.zeros((250, 250, 3), np.uint8)
    img[:125] = 255  # top half white
    out = fit_face(img, (112, 96), 3)
    assert out.shape == (112, 96, 3)
    assert out[:50].min() == 255 and out[62:].max() == 0
    grey = fit_face(img, (48, 48), 1, crop=[0, 0, 1, 0.5])
    assert grey.shape == (48, 48) and grey.min() == 255


def test_normalisation_constants():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    np.testing.assert_allclose(normalize(x, "face_nonaligned").flatten().numpy(), [-1.0, 1.0])
    y = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    np.testing.assert_allclose(normalize(y, "face_aligned").flatten().numpy(), [127.5 / 128] * 3)
    with pytest.raises(ValueError, match="channel"):
        normalize(y, "face_nonaligned")


def test_batch_affine_identity_flip_and_seed():
    x = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    ident = BatchAffine(0, 0, 1.0, 0, 0.0)
    torch.testing.assert_close(ident(x), x.float(), atol=0.01, rtol=0)  # exact up to grid rounding
    flip = BatchAffine(0, 0, 1.0, 0, 1.0)
    torch.testing.assert_close(flip(x), torch.flip(x, dims=[3]).float(), atol=0.01, rtol=0)
    aug = BatchAffine()
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    p = aug.sample(1000, torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= 20 and p["scale"].min() >= 1 / 1.05 and p["scale"].max() <= 1.05
    assert 0.4 < p["flip"].double().mean() < 0.6


def test_per_image_transform_is_seeded_by_epoch_and_index():
    images = np.random.default_rng(6).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    aug = load_config(None)["aug"]
    ds = FaceDataset(images, np.zeros(4, np.int64), FERPLUS_EMOTIONS, transform=train_transform("face_nonaligned", aug))
    state = torch.get_rng_state()
    first = ds[1][0]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(ds[1][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], first)


# --------------------------------------------------------------------------- the real FERPlus files

@pytest.mark.shared
@pytest.mark.skipif(not (SHARED_FERPLUS / "FER2013Valid" / "label.csv").is_file(),
                    reason="../shared/data/ferplus is not present")
def test_real_ferplus_valid_split(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    raw = read_ferplus(SHARED_FERPLUS, "val", progress=False)
    assert raw["images"].shape == (3579, 48, 48)
    assert raw["names"][0] == "fer0028638.png"
    counts = {}
    for mode in ("majority", "probability", "crossentropy"):
        keep, dist = ferplus_targets(raw["votes"], mode)
        ref_keep, _ = _reference_targets(raw["votes"], mode)
        assert keep.tolist() == ref_keep
        counts[mode] = len(keep)
    # FERPlus majority-vote validation set size as published (Barsoum et al.): 3,191 images
    assert counts == {"majority": 3191, "probability": 3508, "crossentropy": 3508}


def test_named_reader_labels_from_file_names(tmp_path):
    from PIL import Image

    from groupmood.data.face_sources import read_named
    from groupmood.errors import DatasetError

    rng = np.random.default_rng(0)
    for name in ("KA.HA2.29.jpg", "KL.SA1.40.jpg", "YM.NE3.49.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / name)
    table = read_named(tmp_path, (48, 48), 1, r"^[A-Za-z]+\.([A-Za-z]{2})", group_regex=r"^([A-Z]+)\.",
                       cache=False, progress=False)
    assert table.labels.tolist() == ["happiness", "sadness", "neutral"]
    assert table.groups.tolist() == ["KA", "KL", "YM"]
    assert table.images.shape == (3, 48, 48)
    (tmp_path / "photo_1.jpg").write_bytes((tmp_path / "KA.HA2.29.jpg").read_bytes())
    with pytest.raises(DatasetError, match="finds no label"):
        read_named(tmp_path, (48, 48), 1, r"^[A-Za-z]+\.([A-Za-z]{2})", cache=False, progress=False)
