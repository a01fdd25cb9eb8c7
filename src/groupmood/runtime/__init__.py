"""Inference backends: PyTorch, or ONNX Runtime on a CPU (models exported once into the cache).

:mod:`.session` (no PyTorch) finds and runs the cached ONNX files; :mod:`.export` (PyTorch) makes them.
"""
from .session import (BACKENDS, OrtModel, OrtSettings, cache_path, load_cached, onnx_cache_dir, ort_available,
                      resolve_backend, set_intra_op_threads, settings)

__all__ = ["BACKENDS", "OrtModel", "OrtSettings", "cache_path", "load_cached", "onnx_cache_dir", "ort_available",
           "resolve_backend", "set_intra_op_threads", "settings"]
