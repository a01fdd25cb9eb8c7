"""Inference backends: PyTorch, or ONNX Runtime on a CPU (models exported once into the cache)."""
from .onnx import (BACKENDS, OrtModel, OrtSettings, export_onnx, onnx_cache_dir, ort_available, resolve_backend,
                   settings)

__all__ = ["BACKENDS", "OrtModel", "OrtSettings", "export_onnx", "onnx_cache_dir", "ort_available",
           "resolve_backend", "settings"]
