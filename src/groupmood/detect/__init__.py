"""MTCNN face detection: networks, batched cascade, and the FaceDetector front."""
from .cascade import CascadeSettings
from .detector import LANDMARK_NAMES, Face, FaceDetector

__all__ = ["CascadeSettings", "Face", "FaceDetector", "LANDMARK_NAMES"]
