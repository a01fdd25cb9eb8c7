"""``groupmood detect`` end to end through main(argv) on a temporary folder of real photos."""
import json

import numpy as np
from PIL import Image

from groupmood.cli import main
from numerics import assert_off_threshold_edge, cascade_error, float32_tolerance, max_abs_diff

RECORD_STEP = 0.01  # records round coordinates to 2 decimals (Face.to_dict)


def _folder(tmp_path, astronaut, coffee):
    src = tmp_path / "in put"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "astronaut photo.jpg")
    Image.fromarray(coffee).save(src / "sub" / "café.png")
    (src / "broken.jpg").write_bytes(b"")
    return src


def test_detect_folder_jsonl_annotate_crops(tmp_path, astronaut, coffee, capsys):
    src = _folder(tmp_path, astronaut, coffee)
    out = tmp_path / "out" / "faces.jsonl"
    rc = main(["detect", str(src), "-o", str(out), "--annotate", str(tmp_path / "ann"),
               "--crops", str(tmp_path / "crops"), "--no-progress", "--batch-size", "2"])
    assert rc == 1  # one file failed
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "empty file" in err
    assert "2 photos, 1 faces, 1 failed" in err
    recs = {json.loads(line)["file"].split("/")[-1]: json.loads(line) for line in out.read_text().splitlines()}
    assert set(recs) == {"astronaut photo.jpg", "café.png", "broken.jpg"}
    assert recs["broken.jpg"]["error"] == "empty file (0 bytes)"
    assert recs["café.png"]["faces"] == []
    face = recs["astronaut photo.jpg"]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and face["score"] > 0.99
    assert recs["astronaut photo.jpg"]["width"] == 512
    assert (tmp_path / "ann" / "astronaut photo.jpg").exists()
    assert (tmp_path / "ann" / "sub" / "café.jpg").exists()
    aligned = np.asarray(Image.open(tmp_path / "crops" / "astronaut photo" / "face000_aligned.png"))
    grey = np.asarray(Image.open(tmp_path / "crops" / "astronaut photo" / "face000_48.png"))
    assert aligned.shape == (112, 96, 3) and grey.shape == (48, 48)
    assert not list(out.parent.glob("*.partial"))


def test_detect_resume_skips_done(tmp_path, astronaut, coffee, capsys):
    src = _folder(tmp_path, astronaut, coffee)
    (src / "broken.jpg").unlink()
    out = tmp_path / "faces.jsonl"
    partial = tmp_path / "faces.jsonl.partial"
    first = json.dumps({"file": str(src / "astronaut photo.jpg"), "width": 512, "height": 512, "faces": []})
    partial.write_text(first + "\n" + '{"file": "cut mid-wri')
    assert main(["detect", str(src), "-o", str(out), "--resume", "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["faces"] == []  # kept, not recomputed
    assert "café.png" in lines[1]
    assert "already done: 1" in capsys.readouterr().err


def test_detect_stdout_and_usage_errors(tmp_path, astronaut, capsys):
    p = tmp_path / "a.png"
    Image.fromarray(astronaut).save(p)
    assert main(["detect", str(p), "--no-progress", "--min-face-px", "40"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert len(rec["faces"]) == 1
    assert main(["detect", str(tmp_path / "empty_dir_*.png"), "--no-progress"]) == 1
    assert "no file matches this pattern" in capsys.readouterr().err
    assert main(["detect"]) == 2


def test_detect_backends_give_the_same_records(tmp_path, astronaut, coffee, detector):
    """ONNX Runtime (one photo per CPU) and PyTorch: same files in the same order, same faces. Records round
    coordinates to 0.01 px, so two values within the float32 tolerance (``numerics``: PyTorch's own error against
    float64 nets on these photos) may differ by one rounding step more; the photos are off the threshold edge."""
    src = _folder(tmp_path, astronaut, coffee)
    for k, img in enumerate((astronaut, coffee)):
        assert_off_threshold_edge(img, detector, name=f"photo {k}")
    px, _ = cascade_error([astronaut, coffee], detector.runners, detector)
    recs = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.jsonl"
        assert main(["detect", str(src), "-o", str(out), "--backend", backend, "--no-progress"]) == 1
        recs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    ort, ref = recs["onnxruntime"], recs["torch"]
    assert [r["file"] for r in ort] == [r["file"] for r in ref]
    for a, b in zip(ort, ref):
        assert len(a.get("faces", [])) == len(b.get("faces", []))
        for fa, fb in zip(a.get("faces", []), b.get("faces", [])):
            tol = RECORD_STEP + float32_tolerance(np.asarray(fb["box"]), px)
            assert max_abs_diff(fa["box"], fb["box"]) <= tol
            assert max_abs_diff(fa["landmarks"], fb["landmarks"]) <= tol
