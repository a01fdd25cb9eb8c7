"""Shared fixtures: real photos from scikit-image's bundled data, the real MTCNN, the serve tests' tiny bundle,
../shared paths."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from groupmood.pipeline import GroupEmotionRecognizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GROUPMOOD_SHARED", REPO.parent / "shared")) / "data"


#: What a test run copies from the user's cache into its own: files it only reads (fetched weights, the
#: default models' ONNX export, the sample photo, converted third-party nets), so no test downloads again.
SEEDED = ("weights", "onnx", "samples", "converted")
_SANDBOX = pytest.StashKey[tuple[Path, "str | None"]]()


def pytest_configure(config: pytest.Config) -> None:
    """Give the run its own ``GROUPMOOD_HOME`` (a temporary folder, seeded from the user's cache), so that no
    test writes into the user's cache; subprocesses inherit it. Removed when the run ends."""
    from groupmood import weights

    user = weights.home()
    sandbox = Path(tempfile.mkdtemp(prefix="groupmood-test-home-"))
    for name in SEEDED:
        if (user / name).is_dir():
            shutil.copytree(user / name, sandbox / name, ignore=shutil.ignore_patterns(".fetch-*", "*.tmp"))
    config.stash[_SANDBOX] = (sandbox, os.environ.get("GROUPMOOD_HOME"))
    os.environ["GROUPMOOD_HOME"] = str(sandbox)


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox, before = config.stash.get(_SANDBOX, (None, None))
    if sandbox is None:
        return
    if before is None:
        os.environ.pop("GROUPMOOD_HOME", None)
    else:
        os.environ["GROUPMOOD_HOME"] = before
    shutil.rmtree(sandbox, ignore_errors=True)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test where it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared/data is optional)")
    return p


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of tiny tensors: more gain nothing, and the box may be shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def detector():
    """The real MTCNN with the original weights (fetched into the cache on first use)."""
    from groupmood.detect import FaceDetector

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return FaceDetector.from_pretrained(auto_fetch=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, detector, one_thread) -> tuple[Path, GroupEmotionRecognizer]:
    """A bundle of tiny random models (test_pipeline's) and its recognizer (the real MTCNN); the serve tests'."""
    from test_pipeline import _bundle

    from groupmood.pipeline import GroupEmotionRecognizer

    torch.manual_seed(0)
    bundle = _bundle(tmp_path_factory.mktemp("serve_bundle") / "b")
    return bundle, GroupEmotionRecognizer.from_bundle(bundle, detector=detector)


@pytest.fixture(scope="session")
def browser() -> str:
    """A headless-capable Chromium (``GROUPMOOD_BROWSER`` or on PATH), or skip the test where there is none."""
    for name in (os.environ.get("GROUPMOOD_BROWSER"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    pytest.skip("no Chromium here (apt-get install chromium, or set GROUPMOOD_BROWSER)")
