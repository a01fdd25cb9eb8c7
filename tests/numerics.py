"""Tolerances for comparing float32 results, derived from the computation, so that tests hold on any CPU.

Two float32 runs of the same network (PyTorch on an AVX2 CPU and on an AVX-512 CPU, ONNX Runtime and
PyTorch, a batch and a single photo) sum the same products in different orders, so each ends a few
units in the last place (ULPs) away from the exact result, and they differ from each other by the sum
of the two errors. The exact result is computed here, in the test, by running the same nets in float64
(:func:`float64_runners`): the error of the float32 run on this machine is then measured, not guessed.
A run on another CPU has an error of the same order but not the same value, so a comparison allows
``KERNEL_FACTOR`` times the larger of the measured error and one ULP of the largest value compared
(:func:`float32_tolerance`; the ULP floor covers a run that was exact here by luck).

Exact counts (the same number of faces from two runs) hold only where no score lies within float32
noise of a threshold: :func:`threshold_edge` measures, for a photo, how close any P-, R- or O-Net
score comes to its stage's threshold and how far the float32 scores are from the float64 ones, and
:func:`assert_off_threshold_edge` fails with a message that says to choose another photo where the
first is not at least ``KERNEL_FACTOR`` noises away from the second.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from groupmood.detect import CascadeSettings, FaceDetector
from groupmood.detect.cascade import run_cascade

#: How many times the float32 error measured on this machine another machine's float32 error may be:
#: both sum the same products in another order, so their errors are of one order of magnitude.
KERNEL_FACTOR = 4.0


def ulp(values: np.ndarray | float) -> float:
    """One float32 unit in the last place at the largest magnitude in ``values`` (0 for an empty array)."""
    top = float(np.max(np.abs(values), initial=0.0))
    return float(np.spacing(np.float32(top)))


def float32_tolerance(values: np.ndarray, *errors: float) -> float:
    """``KERNEL_FACTOR`` times the largest measured float32 error, or one ULP of ``values`` if larger."""
    return KERNEL_FACTOR * max(ulp(values), *errors)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays of one shape (0 for empty ones)."""
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


class Float64Runner:
    """A copy of a PyTorch MTCNN net run in float64, called as the cascade calls its nets (float32 out)."""

    channels_last = False

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = copy.deepcopy(net).double().eval()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
        return tuple(o.float().numpy() for o in out)


def float64_runners(detector: FaceDetector) -> tuple[Float64Runner, Float64Runner, Float64Runner]:
    """P-, R- and O-Net of a PyTorch detector, in float64: the reference the float32 runs are measured against."""
    return Float64Runner(detector.pnet), Float64Runner(detector.rnet), Float64Runner(detector.onet)


@dataclass(frozen=True)
class Edge:
    """How close a photo's scores come to the thresholds (``margin``) and the float32 noise on them (``noise``)."""

    margin: float
    noise: float

    @property
    def safe(self) -> bool:
        """No score can cross a threshold on another machine: the margin is ``KERNEL_FACTOR`` noises wide."""
        return self.margin > KERNEL_FACTOR * max(self.noise, ulp(1.0))


def threshold_edge(image: np.ndarray, detector: FaceDetector, cfg: CascadeSettings | None = None) -> Edge:
    """Run the cascade on ``image`` with each net's float32 and float64 outputs side by side; return the smallest
    distance of any float32 score to its stage's threshold and the largest float32-float64 score difference."""
    cfg = cfg or detector.settings
    margins: list[float] = []
    noise: list[float] = []

    def probe(stage: int, runner, exact: Float64Runner):
        def call(x: np.ndarray) -> tuple[np.ndarray, ...]:
            out = runner(x)
            ref = exact(x)
            margins.append(float(np.min(np.abs(out[-1] - np.float32(cfg.thresholds[stage])), initial=1.0)))
            noise.append(max_abs_diff(out[-1], ref[-1]))
            return out

        call.channels_last = getattr(runner, "channels_last", False)
        return call

    exact = float64_runners(detector)
    run_cascade([image], *(probe(k, r, e) for k, (r, e) in enumerate(zip(detector.runners, exact))), cfg, "cpu")
    return Edge(min(margins, default=1.0), max(noise, default=0.0))


def assert_off_threshold_edge(image: np.ndarray, detector: FaceDetector, cfg: CascadeSettings | None = None,
                              name: str = "photo") -> None:
    """Fail unless every score on ``image`` is ``KERNEL_FACTOR`` float32 noises away from its threshold, so that
    two float32 runs find the same faces; a test comparing face counts exactly calls this first."""
    edge = threshold_edge(image, detector, cfg)
    assert edge.safe, (f"{name}: a score lies {edge.margin:.2e} from a threshold with float32 noise {edge.noise:.2e}; "
                       "an exact face count there depends on the CPU: choose another photo for this test")


def cascade_error(images: Sequence[np.ndarray], runners, detector: FaceDetector,
                  cfg: CascadeSettings | None = None) -> tuple[float, float]:
    """The largest float32 error of boxes/landmarks (px) and of scores of ``runners`` on ``images``, measured
    against the float64 nets; the photos must be off the threshold edge (same faces either way)."""
    cfg = cfg or detector.settings
    exact = float64_runners(detector)
    px, sc = 0.0, 0.0
    for image in images:
        got = run_cascade([image], *runners, cfg, "cpu")[0]
        ref = run_cascade([image], *exact, cfg, "cpu")[0]
        px = max(px, max_abs_diff(got[0], ref[0]), max_abs_diff(got[2], ref[2]))
        sc = max(sc, max_abs_diff(got[1], ref[1]))
    return px, sc
