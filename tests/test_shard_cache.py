"""Sharded ``cache build``: 2 shards build what one build builds, the last merges the indexes in input
order, an interrupted shard redoes only its unfinished images, and ``groupmood merge`` merges by hand."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from groupmood.cli import main
from groupmood.data.cache import FaceCache
from groupmood.shard import Shard


def _photos(tmp_path, astronaut, coffee):
    """Five real photos (two with a face), plus an unreadable file."""
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(astronaut).save(d / "a_astro.png")
    Image.fromarray(coffee).save(d / "b_coffee.png")
    Image.fromarray(astronaut[::2, ::2]).save(d / "c_astro_small.png")
    Image.fromarray(coffee[:, ::-1]).save(d / "d_coffee_flip.png")
    Image.fromarray(astronaut[:, ::-1]).save(d / "e_astro_flip.png")
    (d / "f_bad.jpg").write_bytes(b"nope")
    return sorted(d.iterdir())


def _index_keys(cache: FaceCache) -> list[str]:
    return [json.loads(x)["key"] for x in cache.index_path.read_text().splitlines()]


def test_two_shards_build_and_merge_like_one(tmp_path, astronaut, coffee, detector):
    paths = _photos(tmp_path, astronaut, coffee)
    whole = FaceCache(tmp_path / "whole")
    whole.build(paths, detector=detector, shard_size=2, progress=False)

    cache = FaceCache(tmp_path / "sharded")
    r1 = cache.build(paths, detector=detector, shard_size=1, progress=False, shard=Shard(1, 2))
    assert r1.computed == 2 and not r1.merged and [e.path for e in r1.errors] == [str(paths[5])]
    assert not cache.index_path.exists() and (cache.dir / "index.part-1-of-2.jsonl").is_file()

    # shard 0 "killed" after its first image: its last part file and done marker are missing
    r0 = FaceCache(tmp_path / "sharded").build(paths, detector=detector, shard_size=1, progress=False,
                                               shard=Shard(0, 2))
    assert r0.computed == 3 and r0.merged
    assert _index_keys(cache) == _index_keys(whole)  # merged in input order
    assert not list(cache.dir.glob("index.part-*")) and not list(cache.dir.glob("*.done"))
    fresh = FaceCache(tmp_path / "sharded")
    for p in paths[:5]:
        a, b = fresh.get(p), whole.get(p)
        assert (a.width, a.height, len(a.faces)) == (b.width, b.height, len(b.faces))
        np.testing.assert_array_equal(a.aligned, b.aligned)
        np.testing.assert_array_equal(a.grey48, b.grey48)


def test_interrupted_shard_redoes_only_its_unfinished_images(tmp_path, astronaut, coffee, detector):
    paths = _photos(tmp_path, astronaut, coffee)
    cache = FaceCache(tmp_path / "c")
    cache.build(paths, detector=detector, shard_size=1, progress=False, shard=Shard(0, 2))  # images 0, 2, 4
    last = max(cache.dir.glob("part-0-of-2-*.npz"))
    last.unlink()  # a kill before the last shard file was written
    (cache.dir / "part-0-of-2.done").unlink()
    again = FaceCache(tmp_path / "c").build(paths, detector=detector, shard_size=1, progress=False,
                                            shard=Shard(0, 2))
    assert again.computed == 1 and again.cached == 2 and not again.merged


def test_cli_shard_option_and_merge_command(tmp_path, astronaut, coffee, detector, capsys):
    paths = _photos(tmp_path, astronaut, coffee)[:5]
    root = tmp_path / "cli"
    argv = ["cache", "build", *map(str, paths), "--cache-dir", str(root), "--no-progress"]
    assert main([*argv, "--shard", "0/2"]) == 0
    assert "shard 0/2" in capsys.readouterr().err
    assert main(["merge", str(root)]) == 0  # by hand, before shard 1 ran: shard 0's rows
    assert "merged its part indexes" in capsys.readouterr().err
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "merged the shards" in capsys.readouterr().err
    cache = FaceCache(root)
    assert len(_index_keys(cache)) == 5 and all(cache.get(p) for p in paths)
    assert main([*argv, "--shard", "2/2"]) == 2


def test_no_lock_file_is_left_after_a_build(tmp_path, astronaut):
    """Index appends and merges lock a file beside the index; it goes when the lock is let go."""
    from PIL import Image

    from groupmood.cli import main

    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "a.png")
    for shard in ("0/2", "1/2"):
        assert main(["cache", "build", str(src), "--cache-dir", str(tmp_path / "c"), "--shard", shard,
                     "--no-progress"]) == 0
    assert not [p.name for p in (tmp_path / "c").rglob("*.lock")]
