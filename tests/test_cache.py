"""Face cache: computed once, keyed by content, resumable, same crops as the pipeline."""
import json

import numpy as np
from PIL import Image

from groupmood.align import align_faces
from groupmood.cli import main
from groupmood.data.cache import FaceCache, detected_crops, file_key


def _photos(tmp_path, astronaut, coffee):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(astronaut).save(d / "astro.png")
    Image.fromarray(coffee).save(d / "coffee.png")
    (d / "copy of astro.png").write_bytes((d / "astro.png").read_bytes())
    return d


def test_build_get_resume(tmp_path, astronaut, coffee, detector):
    d = _photos(tmp_path, astronaut, coffee)
    bad = d / "bad.jpg"
    bad.write_bytes(b"nope")
    paths = sorted(d.iterdir())
    cache = FaceCache(tmp_path / "cache")
    rep = cache.build(paths, detector=detector, shard_size=2, progress=False)
    assert rep.computed == 2 and rep.faces == 1 and [e.path for e in rep.errors] == [str(bad)]
    entry = cache.get(d / "astro.png")
    assert entry.width == 512 and len(entry.faces) == 1
    assert entry.aligned.shape == (1, 112, 96, 3) and entry.grey48.shape == (1, 48, 48)
    want = detector.detect_one(astronaut)[0]
    np.testing.assert_allclose(entry.faces[0].box, want.box, atol=1e-3)
    np.testing.assert_array_equal(entry.aligned, align_faces(astronaut, want.landmarks[None]))
    assert cache.get(d / "copy of astro.png").key == entry.key == file_key(d / "astro.png")
    assert cache.get(d / "coffee.png").faces == []
    # a fresh object on the same folder resumes: nothing recomputed
    again = FaceCache(tmp_path / "cache").build(paths, detector=detector, progress=False)
    assert again.computed == 0 and again.cached == 3


def test_cut_index_line_is_recomputed(tmp_path, astronaut, coffee, detector):
    d = _photos(tmp_path, astronaut, coffee)
    cache = FaceCache(tmp_path / "cache")
    cache.build([d / "astro.png"], detector=detector, progress=False)
    with open(cache.index_path, "a") as f:
        f.write('{"key": "abc", "sha')  # a crash mid-line
    fresh = FaceCache(tmp_path / "cache")
    assert len(fresh) == 1
    rep = fresh.build([d / "astro.png", d / "coffee.png"], detector=detector, progress=False)
    assert rep.computed == 1 and rep.cached == 1
    rows = [json.loads(x) for x in cache.index_path.read_text().splitlines() if x.endswith("}")]
    assert len({r["key"] for r in rows}) == 2


def test_settings_get_their_own_folder(tmp_path):
    from groupmood.detect import CascadeSettings

    a = FaceCache(tmp_path)
    b = FaceCache(tmp_path, CascadeSettings(min_face_frac=0.1))
    assert a.dir != b.dir


def test_detected_crops_and_cli(tmp_path, astronaut, coffee, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path / "home"))
    d = _photos(tmp_path, astronaut, coffee)
    assert main(["cache", "build", str(d), "--no-progress"]) == 0
    crops, found = detected_crops([d / "astro.png", d / "coffee.png"], aligned=True, progress=False)
    assert found.tolist() == [True, False] and crops.shape == (1, 112, 96, 3)
    grey, _ = detected_crops([d / "astro.png"], aligned=False, progress=False)
    assert grey.shape == (1, 48, 48)
