"""Pictures for people: detections and labels drawn on the photo."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .detect import Face

_LANDMARK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 160, 0), (200, 64, 255))


def draw_faces(image: np.ndarray, faces: Sequence[Face], colours: Sequence[tuple[int, int, int]] | None = None,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of an RGB image with each face's box, 5 landmarks and optional label drawn on it."""
    out = image.copy()
    scale = max(out.shape[:2]) / 800.0
    thick = max(1, int(round(2 * scale)))
    for k, face in enumerate(faces):
        colour = tuple(int(c) for c in (colours[k] if colours else (0, 255, 0)))
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        for (x, y), c in zip(face.landmarks, _LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), max(2, thick + 1), c, -1, cv2.LINE_AA)
        text = labels[k] if labels else f"{face.score:.2f}"
        font = 0.5 * max(scale, 0.6)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, max(1, thick // 2))
        ty = max(th + base, y1)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), colour, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0),
                    max(1, thick // 2), cv2.LINE_AA)
    return out
