"""A bundle's ``detector:`` section reaches the MTCNN that predict and evaluate-groups build (issue 13, item 3)."""
import json

import pytest
import yaml
from PIL import Image

from groupmood.cli import main
from groupmood.detect import FaceDetector
from groupmood.pipeline import GroupEmotionRecognizer, default_bundle_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def built(monkeypatch, detector):
    """The settings of every FaceDetector built through from_pretrained (the real nets, from the fixture)."""
    seen = []

    def spy(cls, *args, **settings):
        for key in ("device", "weights_dir", "auto_fetch"):
            settings.pop(key, None)
        backend = settings.pop("backend", "torch")
        det = detector.with_settings(**settings)
        if backend != "torch":
            det = det.with_backend(backend)
        seen.append(det.settings)
        return det

    monkeypatch.setattr(FaceDetector, "from_pretrained", classmethod(spy))
    return seen


def _bundle(tmp_path, detector_section):
    shipped = default_bundle_path().parent / "global_efficientnet_lite0.safetensors"
    spec = {"format": "groupmood-bundle-1", "branches": [{"name": "global", "model": str(shipped)}],
            "weights": {"global": 1.0}, "detector": detector_section, "chosen_on": {"data": "none", "method": "test"}}
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_bundle_thresholds_reach_predict_and_evaluate_groups(tmp_path, built, astronaut):
    bundle = _bundle(tmp_path, {"thresholds": [0.55, 0.65, 0.999], "factor": 0.6, "min_face_frac": 0.1})
    photo = tmp_path / "data" / "Positive" / "astronaut.jpg"
    photo.parent.mkdir(parents=True)
    Image.fromarray(astronaut).save(photo)
    assert main(["predict", str(photo), "--bundle", str(bundle), "-o", str(tmp_path / "p.jsonl"),
                 "--backend", "torch", "--no-progress"]) == 0
    assert built[-1].thresholds == (0.55, 0.65, 0.999) and built[-1].factor == 0.6
    assert built[-1].min_face_frac == 0.1
    assert main(["evaluate-groups", str(tmp_path / "data"), "--bundle", str(bundle), "-o", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    assert built[-1].thresholds == (0.55, 0.65, 0.999) and built[-1].factor == 0.6
    # the command line wins over the bundle, the bundle over the authors' defaults
    assert main(["predict", str(photo), "--bundle", str(bundle), "-o", str(tmp_path / "q.jsonl"), "--backend",
                 "torch", "--thresholds", "0.6", "0.7", "0.9", "--no-progress"]) == 0
    assert built[-1].thresholds == (0.6, 0.7, 0.9) and built[-1].factor == 0.6
    assert json.loads((tmp_path / "q.jsonl").read_text())["n_faces"] == 1


def test_from_bundle_builds_its_detector_with_the_bundle_settings(tmp_path, built):
    rec = GroupEmotionRecognizer.from_bundle(_bundle(tmp_path, {"thresholds": [0.5, 0.6, 0.8]}))
    assert rec.detector.settings.thresholds == (0.5, 0.6, 0.8) and built[-1].thresholds == (0.5, 0.6, 0.8)
