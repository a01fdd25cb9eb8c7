"""Real sample photos that ship inside installed packages, for demos and first runs."""
from __future__ import annotations

from pathlib import Path

from .errors import GroupmoodError

#: name -> (package, file inside the package's data folder, what it shows)
SAMPLES: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage.data", "astronaut.png", "Eileen Collins, NASA portrait (one face), public domain"),
    "camera": ("skimage.data", "camera.png", "the cameraman (one face, grey), scikit-image data"),
    "coffee": ("skimage.data", "coffee.png", "a cup of coffee (no face), scikit-image data"),
}


def sample_path(name: str) -> Path:
    """The file of a sample photo; raises GroupmoodError naming what to install when absent."""
    if name not in SAMPLES:
        raise GroupmoodError(f"unknown sample {name!r}; known: {', '.join(sorted(SAMPLES))}")
    module, filename, _ = SAMPLES[name]
    try:
        mod = __import__(module, fromlist=["__file__"])
    except ImportError:
        raise GroupmoodError(f"sample {name!r} comes with scikit-image: pip install scikit-image") from None
    path = Path(mod.__file__).parent / filename
    if not path.is_file():
        raise GroupmoodError(f"{path}: sample file missing from the installed {module} package")
    return path
