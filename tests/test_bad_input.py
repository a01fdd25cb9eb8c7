"""Bad inputs, odd output targets and resume bookkeeping of the command line (issue 12, items 1-12).

Each test builds its fixtures in a temporary folder from scikit-image's bundled photos; the device
case needs root and skips without it.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupmood.cli import main
from groupmood.errors import ImageLoadError
from groupmood.images import load_image
from groupmood.paths import iter_image_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo(astronaut) -> Image.Image:
    return Image.fromarray(astronaut).resize((160, 160))


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def _detect(*args: str) -> int:
    return main(["detect", *map(str, args), "--no-progress"])


# --------------------------------------------------------------------------- 1. output targets

def test_output_symlink_is_followed_and_fifo_written_in_place(tmp_path, photo):
    src = tmp_path / "a.jpg"
    photo.save(src)
    real = tmp_path / "real" / "faces.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert _detect(src, "-o", link) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert [r["file"] for r in _records(real)] == [str(src)]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert _detect(src, "-o", fifo) == 0
        data = os.read(reader, 1 << 16).decode()
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert json.loads(data)["file"] == str(src)
    assert not list(tmp_path.glob("pipe*.partial"))


def test_output_to_a_device_keeps_the_device(tmp_path, photo):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this container may not make device nodes")
    src = tmp_path / "a.jpg"
    photo.save(src)
    assert _detect(src, "-o", dev) == 0
    assert stat.S_ISCHR(os.stat(dev).st_mode)


# --------------------------------------------------------------------------- 2. resume never truncates

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_start_up_never_truncates_the_partial_file(tmp_path, fmt):
    from groupmood.cli.common import JsonlSink
    from groupmood.cli.predict import CsvSink

    out = tmp_path / f"out.{fmt}"
    partial = tmp_path / f"out.{fmt}.partial"
    make = (lambda r: CsvSink(str(out), ["g"], resume=r)) if fmt == "csv" else (lambda r: JsonlSink(str(out), r))
    first = make(False)
    for i in range(50):
        first.write({"file": str(tmp_path / f"p{i}.jpg"), "label": "Positive", "n_faces": 0, "no_face": True,
                     "probs": {}, "branches": {}})
    first.close(complete=False)
    before = partial.read_bytes()
    truncating: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and str(args[0]) == str(partial):
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            if flags & os.O_TRUNC or "w" in mode:
                truncating.append(f"{mode} {flags}")

    _AUDIT.append(hook)
    try:
        sink = make(True)
    finally:
        _AUDIT.remove(hook)
    sink.close(complete=False)
    assert truncating == []  # the old file is replaced by a rename once the new copy is written
    assert partial.read_bytes() == before and len(sink.done) == 50


_AUDIT: list = []
sys.addaudithook(lambda event, args: [h(event, args) for h in list(_AUDIT)] and None)


# --------------------------------------------------------------------------- 3. output names

def test_annotate_and_crops_names_never_collide(tmp_path, photo):
    src = tmp_path / "in"
    src.mkdir()
    photo.save(src / "a.jpg")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "a.png")
    rc = _detect(src, "-o", tmp_path / "x.jsonl", "--annotate", tmp_path / "ann", "--crops", tmp_path / "crops")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["a.jpg.jpg", "a.png.jpg"]
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == ["a.jpg", "a.png"]
    for d in (tmp_path / "crops").iterdir():
        assert sorted(p.name for p in d.iterdir()) == ["face000_48.png", "face000_aligned.png"]


# --------------------------------------------------------------------------- 4. 5. one bad name, the batch goes on

def test_file_name_that_is_not_utf8(tmp_path, photo):
    src = tmp_path / "in"
    src.mkdir()
    odd = os.path.join(os.fsencode(src), b"x\xff.jpg")
    photo.save(odd, format="JPEG")
    photo.save(src / "z.jpg")
    out = tmp_path / "o.jsonl"
    assert _detect(src, "-o", out, "--annotate", tmp_path / "ann") == 0
    recs = _records(out)
    assert [Path(r["file"]).name for r in recs] == ["x\\xff.jpg", "z.jpg"]
    assert all(len(r["faces"]) == 1 for r in recs)
    assert (tmp_path / "ann" / "z.jpg").exists() and len(list((tmp_path / "ann").iterdir())) == 2


def test_symlink_loop_among_inputs(tmp_path, photo, capsys):
    good = tmp_path / "good.jpg"
    photo.save(good)
    d = tmp_path / "loop"
    d.mkdir()
    (d / "a.jpg").symlink_to("b.jpg")
    (d / "b.jpg").symlink_to("a.jpg")
    (d / "gone.jpg").symlink_to("nowhere.jpg")
    out = tmp_path / "o.jsonl"
    assert _detect(good, d, "-o", out) == 1
    recs = {Path(r["file"]).name: r for r in _records(out)}
    assert len(recs["good.jpg"]["faces"]) == 1
    assert "symbolic link loop" in recs["a.jpg"]["error"] and "symbolic link loop" in recs["b.jpg"]["error"]
    assert "broken symbolic link" in recs["gone.jpg"]["error"]
    assert "1 photos, 1 faces, 3 failed" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. messages, not tracebacks

def test_bad_device_and_unwritable_outputs_are_messages(tmp_path, photo, capsys):
    src = tmp_path / "a.jpg"
    photo.save(src)
    assert _detect(src, "--device", "gpu") == 2
    assert "not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _detect(src, "--device", "cuda") == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert _detect(src, "-o", src / "x.jsonl") == 2
    assert f"cannot write -o {src / 'x.jsonl'}" in capsys.readouterr().err
    if Path("/proc/self").exists():
        assert _detect(src, "-o", "/proc/x.jsonl") == 2
        assert "cannot write -o /proc/x.jsonl" in capsys.readouterr().err
    assert _detect(src, "-o", tmp_path) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["cache", "build", str(src), "--cache-dir", str(src / "c"), "--no-progress"]) == 2
    assert f"cannot write the face cache {src / 'c'}" in capsys.readouterr().err


# --------------------------------------------------------------------------- 7. no hangs, no duplicates

@pytest.mark.integration
def test_fifo_named_like_a_photo_is_skipped_with_a_reason(tmp_path, photo):
    d = tmp_path / "in"
    d.mkdir()
    photo.save(d / "a.jpg")
    os.mkfifo(d / "pipe.jpg")
    out = tmp_path / "o.jsonl"
    assert _detect(d, "-o", out) == 1
    assert "not a regular file (a FIFO" in {Path(r["file"]).name: r for r in _records(out)}["pipe.jpg"]["error"]
    # cache build hashed the FIFO and waited for ever: run it apart, with a time limit
    code = ("import sys; from groupmood.cli import main; "
            f"sys.exit(main(['cache', 'build', {str(d)!r}, '--cache-dir', {str(tmp_path / 'c')!r}, '--no-progress']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "pipe.jpg: not a regular file (a FIFO" in proc.stderr and "1 images computed" in proc.stderr


def test_walks_never_follow_folder_links_into_cycles(tmp_path, photo):
    top = tmp_path / "top"
    d = top / "d"
    (d / "sub").mkdir(parents=True)
    photo.save(top / "outside.jpg")
    photo.save(d / "a.jpg")
    photo.save(d / "sub" / "b.jpg")
    (d / "up").symlink_to("..")
    (d / "self").symlink_to(".")
    (d / "link.jpg").symlink_to("a.jpg")
    found: list[list[Path]] = []
    walker = threading.Thread(target=lambda: found.append(list(iter_image_paths([f"{d}/**/*.jpg"]))), daemon=True)
    walker.start()
    walker.join(30)
    assert not walker.is_alive(), "the recursive glob did not end"
    assert found[0] == [d / "a.jpg", d / "sub" / "b.jpg"]  # link.jpg is a.jpg again
    assert list(iter_image_paths([d, d / "a.jpg", str(d / "sub" / "*.jpg")])) == [d / "a.jpg", d / "sub" / "b.jpg"]


# --------------------------------------------------------------------------- 8. the Python API

@pytest.mark.slow
def test_api_takes_one_image_or_paths(tmp_path, photo, detector):
    from test_pipeline import _bundle

    from groupmood.pipeline import GroupEmotionRecognizer

    torch.manual_seed(0)
    rec = GroupEmotionRecognizer.from_bundle(_bundle(tmp_path / "b", with_global=False), detector=detector)
    arr = np.asarray(photo)
    p = tmp_path / "a.png"
    photo.save(p)
    one = rec.predict(arr)
    assert len(one) == 1 and len(one[0].faces) == 1
    assert [len(r.faces) for r in rec.predict([p, str(p), photo])] == [1, 1, 1]
    assert len(rec.predict(p)) == 1 and len(rec.predict(photo)) == 1
    assert len(rec.predict(np.stack([arr, arr]))) == 2
    assert len(detector.detect(arr)) == 1
    with pytest.raises(ImageLoadError, match="no such file"):
        rec.predict(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="one image"):
        rec.predict(np.zeros((2, 3, 4, 5, 3), np.uint8))


# --------------------------------------------------------------------------- 9. NaN pixels

def test_float_tiff_with_nan_pixels_is_refused(tmp_path):
    data = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    data[3, 5], data[10, 10] = np.nan, np.inf
    p = tmp_path / "f.tif"
    Image.fromarray(data, mode="F").save(p)
    with pytest.raises(ImageLoadError, match="2 of 4096 pixels are NaN or infinite"):
        load_image(p)
    data[3, 5], data[10, 10] = 0.5, 0.5
    Image.fromarray(data, mode="F").save(p)
    assert load_image(p).max() == 255


# --------------------------------------------------------------------------- 10. resume bookkeeping

def test_resume_retries_failures_and_keys_on_the_real_path(tmp_path, photo, monkeypatch, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        photo.save(d / name)
    (d / "bad.jpg").write_bytes(b"")
    out = tmp_path / "o.jsonl"
    partial = tmp_path / "o.jsonl.partial"
    a = json.dumps({"file": str(d / "a.jpg"), "width": 160, "height": 160, "faces": []})
    b_failed = json.dumps({"file": str(d / "b.jpg"), "error": "empty file (0 bytes)"})
    partial.write_text(f"{a}\n{b_failed}\n")
    monkeypatch.chdir(tmp_path)
    assert _detect("in", "-o", out, "--resume") == 1  # relative spelling of the same files
    err = capsys.readouterr().err
    recs = _records(out)
    assert [Path(r["file"]).name for r in recs] == ["a.jpg", "b.jpg", "bad.jpg", "c.jpg"]
    assert recs[0]["faces"] == [] and len(recs[1]["faces"]) == 1 and "error" in recs[2]
    assert "1 failed" in err and "already done: 1 (failed before and tried again: 1)" in err
    assert _detect(d, "-o", out, "--resume") == 1  # absolute again: nothing new but the bad file
    assert len(_records(out)) == 4


# --------------------------------------------------------------------------- 11. input order

def test_records_keep_input_order_within_a_batch(tmp_path, photo):
    d = tmp_path / "in"
    d.mkdir()
    photo.save(d / "a.jpg")
    (d / "b.jpg").write_bytes(b"not an image")
    photo.save(d / "c.jpg")
    out = tmp_path / "o.jsonl"
    assert _detect(d, "-o", out, "--batch-size", "8") == 1
    assert [Path(r["file"]).name for r in _records(out)] == ["a.jpg", "b.jpg", "c.jpg"]


# --------------------------------------------------------------------------- 12. smaller defects

@pytest.mark.integration
def test_export_is_byte_reproducible(tmp_path):
    from test_pipeline import _save

    from groupmood.engine.train import export
    from groupmood.labels import FERPLUS_EMOTIONS

    ckpt = tmp_path / "m.pt"
    _save(ckpt, "resnet_tiny_48", FERPLUS_EMOTIONS)
    digests = {hashlib.sha256(export(ckpt, tmp_path / f"m{i}.safetensors").read_bytes()).hexdigest()
               for i in range(4)}
    assert len(digests) == 1
    code = ("import sys; from groupmood.engine.train import export; "
            f"export({str(ckpt)!r}, {str(tmp_path / 'sub.safetensors')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert hashlib.sha256((tmp_path / "sub.safetensors").read_bytes()).hexdigest() in digests


def test_killed_cache_build_leaves_no_temp_files_and_small_shards(tmp_path, photo, capsys):
    from groupmood.cli.cache import build_cmd
    from groupmood.data.cache import FaceCache
    from groupmood.detect import CascadeSettings

    src = tmp_path / "a.jpg"
    photo.save(src)
    cache = FaceCache(tmp_path / "c", CascadeSettings())
    cache.dir.mkdir(parents=True)
    stale = cache.dir / ".shard-00000.npz.abc123.tmp"
    stale.write_bytes(b"half a shard")
    os.utime(stale, (1e9, 1e9))
    assert main(["cache", "build", str(src), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 0
    assert not stale.exists()
    shard_size = next(p for p in build_cmd.params if p.name == "shard_size").default
    assert shard_size <= 32  # a killed build redoes at most this many images


def test_verify_passes_without_optional_weights(tmp_path, monkeypatch, capsys, detector):
    from groupmood import weights as W
    from groupmood.cli.weights import SETUP_WEIGHTS

    real_home = W.home()
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path))
    for name in SETUP_WEIGHTS:
        dst = W.cached_path(name)
        dst.parent.mkdir(parents=True)
        dst.write_bytes((real_home / "weights" / name / W.spec(name).filename).read_bytes())
    assert main(["weights", "verify"]) == 0
    out = capsys.readouterr().out
    assert "ok       mtcnn_pnet" in out and "not fetched (optional" in out
    assert main(["weights", "verify", "fer_mini_xception"]) == 1
    W.cached_path("mtcnn_onet").unlink()
    assert main(["weights", "verify"]) == 1


def test_resume_to_stdout_is_refused_and_abort_says_resume(tmp_path, photo, monkeypatch, capsys):
    from groupmood.detect import FaceDetector

    src = tmp_path / "a.jpg"
    photo.save(src)
    assert _detect(src, "--resume") == 2
    assert "--resume" in capsys.readouterr().err

    def interrupted(self, images):
        raise KeyboardInterrupt

    monkeypatch.setattr(FaceDetector, "detect", interrupted)
    assert _detect(src, "-o", tmp_path / "o.jsonl") == 130
    err = capsys.readouterr().err
    assert "Aborted" in err and "--resume" in err


def test_train_without_validation_names_its_metric(tmp_path, capsys):
    from test_engine import CONFIGS, _write_faces

    faces = _write_faces(tmp_path / "faces", per_class=8)
    rc = main(["train", str(CONFIGS / "tiny.yaml"), "--set", f"data.root={faces}", "--set", "train.epochs=1",
               "--set", "train.val_every=0", "--out", str(tmp_path / "run"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "best training accuracy (no validation" in out and "val metric" not in out


def test_size_guard_quotes_the_real_limit(tmp_path, photo, capsys):
    p = tmp_path / "a.png"
    photo.save(p)
    with pytest.raises(ImageLoadError) as info:
        load_image(p, max_pixels=1000)
    assert "160 x 160 = 25600 pixels, above the limit of 1000" in str(info.value) and "2000" not in str(info.value)
    rc = main(["cache", "build", str(p), "--cache-dir", str(tmp_path / "c"), "--max-pixels", "1000", "--no-progress"])
    assert rc == 1 and "above the limit of 1000" in capsys.readouterr().err


def test_folders_report_heic_read_ico_and_note_empty_folders(tmp_path, photo, capsys):
    d = tmp_path / "phone"
    d.mkdir()
    photo.save(d / "icon.ico")
    (d / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.jsonl"
    assert _detect(d, tmp_path / "empty", "-o", out) == 1
    recs = {Path(r["file"]).name: r for r in _records(out)}
    assert set(recs) == {"icon.ico", "IMG_0001.HEIC"} and "faces" in recs["icon.ico"]
    assert "HEIC images cannot be read here" in recs["IMG_0001.HEIC"]["error"]
    assert f"note: {tmp_path / 'empty'}: no image files in this folder" in capsys.readouterr().err
