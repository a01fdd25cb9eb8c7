"""Whole-image datasets: GAF folders, CSV, the three sentiment formats, merging, split files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupmood.config import load_config
from groupmood.data import build_data
from groupmood.data.groups import (
    decode_images, read_emotion6, read_gaf, read_image_csv, read_sentibank, read_you2015, split_source,
)
from groupmood.errors import ConfigError, DatasetError
from groupmood.models import model_info

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_thread")


def _img(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A small real image file; ``fmt`` may differ from the extension (GAF's PNGs named .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture()
def gaf(tmp_path: Path) -> Path:
    root = tmp_path / "gaf"
    _img(root / "train/Positive/party.jpg", seed=1)
    _img(root / "train/Positive/party.png", "PNG", seed=2)          # same base name, other file
    _img(root / "train/Negative/funeral.jpg", "PNG", seed=3)        # a PNG named .jpg
    _img(root / "train/Neutral/meeting 1.jpg", seed=4)
    _img(root / "val/Positive/fête de groupe.jpg", seed=5)          # space and non-ASCII
    _img(root / "val/Negative/riot.jpeg", seed=6)
    _img(root / "val/Neutral/sub/queue.JPG", seed=7)
    return root


def _you2015(root: Path) -> Path:
    rows = []
    for i in range(20):
        name = f"images/{1000 + i // 2}_{i}_x.jpg"  # two photos per poster
        _img(root / name, seed=i)
        rows.append([name, "positive" if i % 3 else "negative", 5 if i < 12 else 3 + i % 2])
    _csv(root / "labels.csv", ["path", "label", "agree"], rows)
    return root


def _sentibank(root: Path) -> Path:
    rows = []
    for i in range(10):
        name = f"twitter/partition{1 + i % 2}/{i}.jpg"
        _img(root / name, seed=50 + i)
        rows.append([name, "positive" if i % 4 else "negative", "obama"])
    _csv(root / "labels.csv", ["path", "label", "hashtag"], rows)
    return root


def _emotion6(root: Path) -> Path:
    lines = ["[image_filename]\t[valence]\t[arousal]\t[prob. anger]"]
    valences = [1.0, 4.5, 4.6, 5.0, 5.4, 5.5, 8.0, 2.0, 7.0, 5.2]
    for i, v in enumerate(valences):
        name = f"{'joy' if v > 5 else 'fear'}/{i + 1}.jpg"
        _img(root / "images" / name, seed=80 + i)
        lines.append(f"{name}\t{v}\t4.0\t0.1")
    (root / "ground_truth.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _cfg(tmp_path: Path, **data: object) -> dict:
    cfg = load_config(None, ["model.name=mobilenet_v2", "train.progress=false"])
    cfg["data"].update({"split": {"train": 0.6, "val": 0.2, "test": 0.2}, "split_dir": str(tmp_path / "splits"),
                        **data})
    return cfg


def test_read_gaf_keeps_both_names_and_folders_split(gaf: Path) -> None:
    t = read_gaf(gaf)
    names = t.names.tolist()
    assert "train/Positive/party.jpg" in names and "train/Positive/party.png" in names
    assert "val/Positive/fête de groupe.jpg" in names and "val/Neutral/sub/queue.JPG" in names
    assert len(t) == 7
    assert dict(zip(names, t.labels.tolist()))["train/Negative/funeral.jpg"] == "Negative"
    assert sorted(set(t.fixed_split.tolist())) == ["train", "val"]
    images = decode_images(t.paths, progress=False)
    assert all(img.dtype == torch.uint8 and img.shape[0] == 3 and min(img.shape[1:]) == 256 for img in images)
    assert tuple(images[names.index("train/Positive/party.jpg")].shape) == (3, 256, 341)


def test_read_gaf_rejects_unknown_class_folder(gaf: Path) -> None:
    _img(gaf / "train/Happy/x.jpg")
    with pytest.raises(DatasetError, match="not a class folder"):
        read_gaf(gaf)


def test_read_image_csv(tmp_path: Path) -> None:
    _img(tmp_path / "a b.jpg")
    _img(tmp_path / "sub/c.png", "PNG")
    path = _csv(tmp_path / "list.csv", ["path", "label"], [["a b.jpg", "Positive"], ["sub/c.png", "neg"]])
    t = read_image_csv(path)
    assert t.names.tolist() == ["a b.jpg", "sub/c.png"] and t.labels.tolist() == ["Positive", "Negative"]
    assert t.fixed_split is None
    _csv(tmp_path / "labels.csv", ["path", "label", "split"], [["a b.jpg", "pos", "train"], ["sub/c.png", "neu", "Test"]])
    t = read_image_csv(tmp_path)
    assert t.fixed_split.tolist() == ["train", "test"] and t.labels.tolist() == ["Positive", "Neutral"]
    _csv(tmp_path / "bad.csv", ["path", "label"], [["a b.jpg", "happy"]])
    with pytest.raises(DatasetError, match="not a group class"):
        read_image_csv(tmp_path / "bad.csv")
    _csv(tmp_path / "gone.csv", ["path", "label"], [["nope.jpg", "Positive"]])
    with pytest.raises(DatasetError, match="missing"):
        read_image_csv(tmp_path / "gone.csv")


def test_read_you2015_test_only_from_full_agreement(tmp_path: Path) -> None:
    t = read_you2015(_you2015(tmp_path / "you"))
    assert len(t) == 20 and set(t.labels.tolist()) == {"Positive", "Negative"}
    assert t.groups[0] == t.groups[1] == "1000"
    split = split_source(t, "auto", {"train": 0.5, "val": 0.2, "test": 0.3}, 0, tmp_path / "you.json")
    assert len(split["test"]) == 6 and t.test_ok[split["test"]].all()
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(20))
    owner = {g: {s for s, idx in split.items() for i in idx if t.groups[i] == g} for g in set(t.groups)}
    assert all(len(v) == 1 for v in owner.values())  # posters never on two sides


def test_read_sentibank_and_emotion6(tmp_path: Path) -> None:
    s = read_sentibank(_sentibank(tmp_path / "senti"))
    assert len(s) == 10 and s.names[1] == "twitter/partition2/1.jpg"
    e = read_emotion6(_emotion6(tmp_path / "e6"))
    assert e.labels.tolist() == ["Negative", "Negative", "Neutral", "Neutral", "Neutral", "Positive", "Positive",
                                 "Negative", "Positive", "Neutral"]
    binary = read_emotion6(tmp_path / "e6", (5.0, 5.0))
    assert "Neutral" not in binary.labels.tolist()
    with pytest.raises(ConfigError, match="valence_cut"):
        read_emotion6(tmp_path / "e6", (6.0, 5.0))


def test_merge_keeps_sources_and_reuses_split_files(tmp_path: Path, gaf: Path) -> None:
    sources = [{"kind": "twitter_you2015", "root": str(_you2015(tmp_path / "you"))},
               {"kind": "twitter_sentibank603", "root": str(_sentibank(tmp_path / "senti"))},
               {"kind": "emotion6", "root": str(_emotion6(tmp_path / "e6"))},
               {"kind": "gaf", "root": str(gaf), "name": "extra", "split": "train"}]
    info = model_info("mobilenet_v2")
    bundle = build_data(_cfg(tmp_path, kind="images", sources=sources), info, tmp_path / "run", ("train", "val", "test"))
    assert bundle.classes == ("Negative", "Neutral", "Positive")
    train = bundle.datasets["train"]
    assert set(train.sources.tolist()) == {"twitter_you2015", "twitter_sentibank603", "emotion6", "extra"}
    assert (train.sources == "extra").sum() == 7  # the extra data all goes to training
    assert all(n.startswith(f"{s}:") for n, s in zip(train.names, train.sources))
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and isinstance(y, int)
    assert torch.equal(train[3][0], train[3][0])  # seeded per (seed, epoch, index)
    files = sorted(p.name for p in (tmp_path / "splits").iterdir())
    assert files == ["emotion6.json", "twitter_sentibank603.json", "twitter_you2015.json"]
    first = {f: (tmp_path / "splits" / f).read_text() for f in files}

    # Reused: another seed does not re-split while the files exist.
    again = build_data(_cfg(tmp_path, kind="images", sources=sources, split_seed=7), info, tmp_path / "run2", ("test",))
    assert again.datasets["test"].names.tolist() == bundle.datasets["test"].names.tolist()
    # Deterministic: the same seed writes the same files again.
    for f in files:
        (tmp_path / "splits" / f).unlink()
    build_data(_cfg(tmp_path, kind="images", sources=sources), info, tmp_path / "run3", ("train",))
    assert {f: (tmp_path / "splits" / f).read_text() for f in files} == first
    assert json.loads(first["twitter_you2015.json"])["meta"]["test_rule"]


def test_two_classes_and_single_source_kinds(tmp_path: Path, gaf: Path) -> None:
    info = model_info("efficientnet_lite0")
    bundle = build_data(_cfg(tmp_path, kind="gaf", root=str(gaf), classes=["Positive", "Negative"]), info,
                        tmp_path / "run", ("train", "val"))
    assert bundle.classes == ("Negative", "Positive")
    assert len(bundle.datasets["train"]) == 3 and len(bundle.datasets["val"]) == 2  # Neutral left out
    assert set(bundle.datasets["val"].labels.tolist()) == {0, 1}
    everything = build_data(_cfg(tmp_path, kind="emotion6", root=str(_emotion6(tmp_path / "e6"))), info,
                            tmp_path / "run", ("all",))
    assert len(everything.datasets["all"]) == 10
    with pytest.raises(DatasetError, match="global model"):
        build_data(_cfg(tmp_path, kind="gaf", root=str(gaf)), model_info("resnet_tiny_48"), tmp_path, ("train",))
    with pytest.raises(ConfigError, match="unknown key"):
        build_data(_cfg(tmp_path, kind="images", sources=[{"kind": "gaf", "root": str(gaf), "foo": 1}]), info,
                   tmp_path, ("train",))
    with pytest.raises(ConfigError, match="needs data.sources"):
        build_data(_cfg(tmp_path, kind="images"), info, tmp_path, ("train",))


def test_split_file_of_other_data_is_refused(tmp_path: Path) -> None:
    t = read_sentibank(_sentibank(tmp_path / "senti"))
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"meta": {}, "splits": {"train": ["not/there.jpg"]}}), encoding="utf-8")
    with pytest.raises(DatasetError, match="belongs to other data"):
        split_source(t, "auto", {"train": 1.0}, 0, path)


@pytest.mark.shared
@pytest.mark.skipif(not all((SHARED_DATA / d).is_dir() for d in ("twitter-you2015", "twitter-sentibank603", "emotion6")),
                    reason="../shared/data image-sentiment sets are not present")
def test_real_label_files() -> None:
    you = read_you2015(SHARED_DATA / "twitter-you2015")
    senti = read_sentibank(SHARED_DATA / "twitter-sentibank603")
    e6 = read_emotion6(SHARED_DATA / "emotion6")
    assert (len(you), len(senti), len(e6)) == (1269, 603, 1980)
    assert int(you.test_ok.sum()) == 882
    assert (you.labels == "Positive").sum() == 769 and (senti.labels == "Positive").sum() == 470
    assert set(e6.labels.tolist()) == {"Negative", "Neutral", "Positive"}
