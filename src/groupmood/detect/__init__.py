"""MTCNN face detection: networks, batched cascade, and the FaceDetector front.

Importing this package does not import PyTorch: the cascade is numpy, and a detector imports
PyTorch only to run (or export) the PyTorch nets (:mod:`.nets`).
"""
from .cascade import CascadeSettings
from .detector import Face, FaceDetector, box_area

__all__ = ["CascadeSettings", "Face", "FaceDetector", "box_area"]
