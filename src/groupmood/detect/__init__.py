"""MTCNN face detection: networks, batched cascade, and the FaceDetector front."""
from .cascade import CascadeSettings
from .detector import Face, FaceDetector, box_area

__all__ = ["CascadeSettings", "Face", "FaceDetector", "box_area"]
