"""Nothing lost, second round: concurrent runs, outputs on top of inputs, images that explode, resumes
that mix settings, and the messages of odd input (the command line and the Python API).

Photos are made in a temporary folder; the recognizer is ``test_pipeline``'s tiny random bundle
(the numbers do not matter, only what is kept, refused and said).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from groupmood.cli import main
from groupmood.cli.common import JsonlSink, run_photos
from groupmood.cli.predict import CsvSink
from groupmood.data.cache import FaceCache
from groupmood.detect import Face
from groupmood.errors import OutputError
from groupmood.images import load_image, load_photo
from groupmood.paths import iter_image_paths, path_key
from groupmood.inputs import center_crop_array
from groupmood.pipeline import GroupEmotionRecognizer
from test_pipeline import _bundle


@pytest.fixture
def photo(astronaut) -> Image.Image:
    return Image.fromarray(astronaut).resize((160, 160))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _bundle(tmp_path_factory.mktemp("bundle") / "b")


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _detect(*args: str | Path) -> int:
    return main(["detect", *map(str, args), "--no-progress"])


def _predict(bundle: Path, *args: str | Path) -> int:
    return main(["predict", *map(str, args), "--bundle", str(bundle), "--backend", "torch", "--no-progress"])


# --------------------------------------------------------------------------- 1. concurrent cache builds

class _SlowFakeDetector:
    """A stand-in for MTCNN: photo with grey level 10 * i has (i % 4) + 1 faces; each call takes a while,
    so that two builds started together are both in their first shard at once."""

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        time.sleep(0.2)
        out = []
        for img in images:
            i = int(img[0, 0, 0]) // 10
            lm = np.array([[20, 24], [44, 24], [32, 34], [22, 46], [42, 46]], np.float32)
            out.append([Face(np.array([8, 8, 56, 56], np.float32), 0.99, lm) for _ in range(i % 4 + 1)])
        return out


def test_two_cache_builds_on_one_folder_never_mix_photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    paths = []
    for i in range(12):
        paths.append(d / f"p{i:02d}.png")
        Image.fromarray(np.full((64, 64, 3), 10 * i, np.uint8)).save(paths[-1])
    root = tmp_path / "cache"
    errors: list[BaseException] = []

    def build(part: list[Path]) -> None:
        try:
            FaceCache(root).build(part, detector=_SlowFakeDetector(), shard_size=2, progress=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    runs = [threading.Thread(target=build, args=(paths[:6],)), threading.Thread(target=build, args=(paths[6:],))]
    for t in runs:
        t.start()
    for t in runs:
        t.join(60)
    assert errors == []
    cache = FaceCache(root)
    for i, p in enumerate(paths):
        entry = cache.get(p)
        assert len(entry.faces) == i % 4 + 1, p.name
        assert abs(float(entry.grey48.mean()) - 10 * i) < 1.0, p.name  # its own crops, not another photo's


# --------------------------------------------------------------------------- 2. two runs on one output

def test_a_second_run_on_the_same_output_is_refused_and_the_first_keeps_its_records(tmp_path, photo, capsys):
    src = tmp_path / "a.jpg"
    photo.save(src)
    out = tmp_path / "o.jsonl"
    first = JsonlSink(str(out))
    for i in range(3):
        first.write({"file": str(tmp_path / f"p{i}.jpg"), "faces": []})
    assert _detect(src, "-o", out, "--resume") == 2
    err = capsys.readouterr().err
    assert f"is being written by another run (process {os.getpid()})" in err and err.count("\n") == 1
    with pytest.raises(OutputError, match="being written by another run"):
        JsonlSink(str(out))
    first.write({"file": str(tmp_path / "p3.jpg"), "faces": []})
    first.close()
    assert [Path(r["file"]).name for r in _records(out)] == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    assert _detect(src, "-o", out, "--resume") == 0  # once the first is done, a resume goes on
    assert len(_records(out)) == 5 and not list(tmp_path.glob(".o.jsonl.lock"))


# --------------------------------------------------------------------------- 3. outputs over inputs

def test_outputs_never_replace_input_photos(tmp_path, photo, tiny, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    photo.save(d / "a.jpg")
    photo.save(d / "b.png")
    before = {p.name: _sha(p) for p in d.iterdir()}
    cases = [
        ("predict", [d, "--annotate", d], "--annotate would write"),
        ("predict", [d, "-o", d / "a.jpg"], "-o"),
        ("predict", [d, "--report", d / "b.png"], "--report"),
        ("detect", [d, "--annotate", d], "--annotate would write"),
        ("detect", [d / "a.jpg", "-o", d / "a.jpg"], "-o"),
    ]
    for command, args, words in cases:
        rc = _predict(tiny, *args) if command == "predict" else _detect(*args)
        err = capsys.readouterr().err
        assert rc == 2, (command, args, err)
        assert words in err and "input photo" in err, err
        assert {p.name: _sha(p) for p in d.iterdir()} == before, (command, args)
    link = tmp_path / "link.jsonl"
    link.symlink_to(d / "a.jpg")  # a symlink to a photo is the photo
    assert _detect(d / "a.jpg", "-o", link) == 2
    assert {p.name: _sha(p) for p in d.iterdir()} == before


# --------------------------------------------------------------------------- 4. JSON Lines resume over CSV

def test_resume_without_format_csv_keeps_a_csv_output(tmp_path, photo, capsys):
    src = tmp_path / "a.jpg"
    photo.save(src)
    out = tmp_path / "o.csv"
    sink = CsvSink(str(out), ["g"])
    for i in range(16):
        sink.write({"file": str(tmp_path / f"p{i}.jpg"), "label": "Positive", "n_faces": 0, "no_face": True,
                    "probs": {}, "branches": {}})
    sink.close(complete=False)
    partial = tmp_path / "o.csv.partial"
    before = partial.read_bytes()
    assert _detect(src, "-o", out, "--resume") == 2
    err = capsys.readouterr().err
    assert "holds CSV" in err and "--format csv" in err
    assert partial.read_bytes() == before and not out.exists()


# --------------------------------------------------------------------------- 5. a strip of pixels

def test_a_one_pixel_strip_costs_a_crop_not_gigabytes(monkeypatch):
    asked: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def guarded(self: Image.Image, size: tuple[int, int], *args, **kwargs) -> Image.Image:
        asked.append(tuple(size))
        if size[0] * size[1] > 10_000_000:  # what the old resize asked for: 256 x 20480000
            raise MemoryError("test guard: resize to more than 10 megapixels")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
    recipe = SimpleNamespace(name="global", resize=256, input_size=(224, 224))  # the global branch's
    for shape in [(1, 80000, 3), (30000, 3, 3)]:
        strip = np.full(shape, 120, np.uint8)
        out = center_crop_array(strip, recipe)
        assert out.shape == (224, 224, 3) and int(out.max()) == 120
    assert max(w * h for w, h in asked) <= 224 * 224


def test_a_photo_that_fails_is_reported_and_the_batch_goes_on(tmp_path, photo):
    paths = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        paths.append(tmp_path / name)
        photo.save(paths[-1])
    out = tmp_path / "o.jsonl"

    def handle(good: list[tuple[Path, np.ndarray]]) -> list[dict]:
        if any(p.name == "b.jpg" for p, _ in good):
            raise MemoryError()
        return [{"file": str(p), "faces": []} for p, _ in good]

    for workers in (1, 2):
        run = run_photos(paths, 8, 10**8, JsonlSink(str(out)), False, handle, workers=workers)
        recs = _records(out)
        assert run.ok == 2 and [Path(f).name for f, _ in run.failed] == ["b.jpg"]
        assert [Path(r["file"]).name for r in recs] == ["a.jpg", "b.jpg", "c.jpg"]
        assert "not enough memory" in recs[1]["error"] and "error" not in recs[2]


# --------------------------------------------------------------------------- 8. full disk

def test_a_full_disk_is_one_line_exit_status_3_and_resume_continues(tmp_path, photo, monkeypatch, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        photo.save(d / name)
    out = tmp_path / "o.jsonl"
    write = JsonlSink.write
    calls = []

    def filling(self: JsonlSink, record: dict) -> None:
        calls.append(record["file"])
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, record)

    monkeypatch.setattr(JsonlSink, "write", filling)
    assert _detect(d, "-o", out) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device") and err.count("\n") == 1, err
    assert "kept in" in err and "o.jsonl.partial" in err and "--resume" in err
    monkeypatch.setattr(JsonlSink, "write", write)
    assert len(_records(tmp_path / "o.jsonl.partial")) == 1
    assert _detect(d, "-o", out, "--resume") == 0
    assert [Path(r["file"]).name for r in _records(out)] == ["a.jpg", "b.jpg", "c.jpg"]
    capsys.readouterr()
    assert _detect(d / "a.jpg", "-o", "/dev/full") == 3  # a device: nothing to resume
    assert capsys.readouterr().err == ("error: no space left on device writing the output; free some space and run "
                                       "the command again\n")


# --------------------------------------------------------------------------- 11. CSV formula injection

def test_csv_cells_never_start_a_formula_and_resume_reads_the_names_back(tmp_path):
    out = tmp_path / "o.csv"
    names = ["=HYPERLINK(\"http://x.example\",\"click\").jpg", "+1.jpg", "-2.jpg", "@sum.jpg", "\t=x.jpg", "ok.jpg"]
    sink = CsvSink(str(out), ["g"])
    for n in names:
        sink.write({"file": n, "label": "Positive", "n_faces": 0, "no_face": True, "probs": {}, "branches": {}})
    sink.write({"file": "bad.jpg", "error": "=1+1"})
    sink.close(complete=False)
    import csv

    rows = list(csv.reader((tmp_path / "o.csv.partial").open(encoding="utf-8")))
    cells = [r[0] for r in rows[1:]] + [rows[-1][-1]]
    assert all(not c or c[0] not in "=+-@\t\r" for c in cells), cells
    assert rows[1][0] == "'" + names[0] and rows[-2][0] == "ok.jpg"
    resumed = CsvSink(str(out), ["g"], resume=True)
    resumed.close(complete=False)
    assert resumed.done == {path_key(n) for n in names}  # the names, not the escaped cells


# --------------------------------------------------------------------------- 12. unreadable folders

def test_unreadable_folders_are_reported_as_failures(tmp_path, photo, monkeypatch, capsys):
    top = tmp_path / "walk"
    (top / "sub").mkdir(parents=True)
    photo.save(top / "a.jpg")
    photo.save(top / "sub" / "b.jpg")
    photo.save(top / "sub" / "c.jpg")
    locked: set[str] = set()
    scandir = os.scandir

    def denying(path=".", *args):  # root reads a folder at mode 000: deny it as the kernel denies a user
        if os.fspath(path) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return scandir(path, *args)

    def lock(folder: Path) -> None:
        if os.geteuid() == 0:
            locked.add(str(folder))
        else:
            folder.chmod(0)

    monkeypatch.setattr(os, "scandir", denying)
    lock(top / "sub")
    try:
        assert [p.name for p in iter_image_paths([top])] == ["a.jpg", "sub"]
        out = tmp_path / "o.jsonl"
        assert _detect(top, "-o", out) == 1
        recs = {Path(r["file"]).name: r for r in _records(out)}
        assert set(recs) == {"a.jpg", "sub"} and "folder cannot be read (Permission denied)" in recs["sub"]["error"]
        assert "1 photos, 1 faces, 1 failed" in capsys.readouterr().err
        lock(top)  # the top folder itself: a failure, not "no image files"
        assert _detect(top, "-o", out) == 1
        err = capsys.readouterr().err
        assert "no image files" not in err and f"skipped {top}: folder cannot be read" in err
    finally:
        for folder in (top, top / "sub"):
            folder.chmod(0o755)


# --------------------------------------------------------------------------- 13. resume with other settings

def test_resume_with_other_weights_or_bundle_is_refused(tmp_path, photo, tiny, capsys):
    d = tmp_path / "in"
    d.mkdir()
    photo.save(d / "a.jpg")
    out = tmp_path / "o.jsonl"
    assert _predict(tiny, d, "-o", out, "--weights", "aligned=1") == 0
    first = out.read_bytes()
    photo.save(d / "b.jpg")
    capsys.readouterr()
    assert _predict(tiny, d, "-o", out, "--resume", "--weights", "global=1") == 2
    err = capsys.readouterr().err
    assert "was written with other settings (weights:" in err and err.count("\n") == 1
    other = _bundle(tmp_path / "other")
    assert _predict(other, d, "-o", out, "--resume", "--weights", "aligned=1") == 2
    assert "bundle:" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert _predict(tiny, d, "-o", out, "--resume", "--weights", "aligned=1") == 0  # the same settings go on
    recs = _records(out)
    assert [Path(r["file"]).name for r in recs] == ["a.jpg", "b.jpg"]
    assert {r["branches"]["aligned"]["weight"] for r in recs} == {1.0}


# --------------------------------------------------------------------------- 14, 15. decoding

def test_a_16_bit_pil_image_reads_as_its_file(tmp_path, detector):
    ramp = np.tile(np.linspace(0, 65535, 96), (64, 1)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    pil = Image.open(p)
    assert pil.mode.startswith("I;16")
    from groupmood.detect.detector import as_photo_list

    (from_pil,) = as_photo_list(pil)
    assert np.array_equal(from_pil.pixels, load_photo(p).pixels)  # scaled, not clipped at 255
    assert 120 <= int(np.median(from_pil.pixels)) <= 135


def test_float_tiff_with_one_huge_finite_pixel_is_not_black(tmp_path):
    data = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    data[3, 5] = 3e38
    p = tmp_path / "f.tif"
    Image.fromarray(data, mode="F").save(p)
    img = load_image(p)
    assert int(img[10].max()) == 255 and 100 <= int(np.median(img)) <= 155  # the ramp, the outlier clipped


# --------------------------------------------------------------------------- 16-19. messages

def test_resumed_line_with_a_number_as_file_is_one_line(tmp_path, photo, capsys):
    src = tmp_path / "a.jpg"
    photo.save(src)
    out = tmp_path / "o.jsonl"
    (tmp_path / "o.jsonl.partial").write_text('{"file": 5}\n')
    assert _detect(src, "-o", out, "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'line 1: "file" is 5, not a file name' in err and err.count("\n") == 1


def test_a_glob_that_is_not_valid_is_one_line(tmp_path, capsys):
    (tmp_path / "ow").mkdir()
    assert _detect(f"{tmp_path}/ow/**/[z-a].jpg") == 2
    err = capsys.readouterr().err
    assert "not a valid glob pattern" in err and err.count("\n") == 1


def test_an_empty_array_is_named_by_its_place(tiny, detector, astronaut):
    rec = GroupEmotionRecognizer.from_bundle(tiny, detector=detector)
    with pytest.raises(ValueError, match=r"images\[1\]: expected an image with at least one pixel"):
        rec.predict([astronaut, np.zeros((0, 0, 3), np.uint8)])
    with pytest.raises(ValueError, match="at least one pixel"):
        rec.predict(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError, match=r"images\[0\]: expected a uint8 image array"):
        rec.predict([astronaut.astype(np.float32)])
