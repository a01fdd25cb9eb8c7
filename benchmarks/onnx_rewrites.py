"""The export-time ONNX graph rewrites (``groupmood/runtime/graph.py``): each net's time under ONNX Runtime with
and without them, on real inputs, and how far the outputs move.

For each MTCNN net the inputs are those it gets while the cascade runs on benchmark photos (P-Net: every
pyramid level; R- and O-Net: every candidate crop, in the cascade's chunks on a CPU); for the whole-image trunk
(EfficientNet-Lite0, the default bundle's gate and scene trunk) the photos' centre crops. Each net is exported
from PyTorch as ``groupmood export`` does, then run three ways in ONNX Runtime with predict's session settings
(one thread, sequential): the plain export, the export after the rewrites (what the cache holds), and an int8
model (``onnxruntime.quantization.quantize_static``, QDQ, per-channel weights, calibrated on the first 2,048 of
the same inputs) as the approximation tried. The variants take turns, ``--rounds`` times; the table gives the
median time of one pass over the inputs and the largest output difference from the plain export's.

    .venv/bin/python benchmarks/onnx_rewrites.py                 # 24 of the 228 benchmark photos, RESULTS.md
    .venv/bin/python benchmarks/onnx_rewrites.py --photos 6 --no-write
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, loadavg, publish_result
from detect import photo_paths


def _int8(model: bytes, batches: list[np.ndarray], folder: Path) -> bytes | None:
    """The int8 model, or None where quantisation fails (a dynamic-size net)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            seen, self.items = 0, []
            for b in batches:
                if seen >= 2048:
                    break
                self.items.append({"input": b})
                seen += len(b)
            self.it = iter(self.items)

        def get_next(self):
            return next(self.it, None)

    src, dst = folder / "plain.onnx", folder / "int8.onnx"
    src.write_bytes(model)
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    except Exception as err:  # report, do not stop the benchmark
        print(f"  int8 quantisation failed: {err}")
        return None
    return dst.read_bytes()


def _inputs(paths: list[Path]) -> dict[str, list[np.ndarray]]:
    """Each net's real inputs on the photos, batched as predict batches them."""
    from groupmood import load_image
    from groupmood.detect.cascade import CascadeSettings, run_cascade
    from groupmood.inputs import normalize_array
    from groupmood.pipeline import GroupEmotionRecognizer

    rec = GroupEmotionRecognizer.default(backend="onnxruntime")
    seen: dict[str, list[np.ndarray]] = {"P-Net": [], "R-Net": [], "O-Net": []}

    def spy(name: str, net):
        def run(x: np.ndarray):
            seen[name].append(np.ascontiguousarray(x, dtype=np.float32))
            return net(x)
        return run

    scene = rec.branches[rec.regime.reads] if rec.regime is not None else None
    crops = []
    for p in paths:
        img = load_image(p)
        run_cascade([img], *(spy(n, r) for n, r in zip(seen, rec.detector.runners)), CascadeSettings())
        if scene is not None:
            crops.append(np.ascontiguousarray(normalize_array(scene.crops(img, []), scene.info), dtype=np.float32))
    seen["EfficientNet-Lite0 trunk"] = crops
    return seen


def _nets() -> dict[str, tuple]:
    from groupmood.detect.nets import load_nets
    from groupmood.pipeline import GroupEmotionRecognizer
    from groupmood.runtime.export import FeaturesOf

    p, r, o = load_nets(auto_fetch=True)
    out = {"P-Net": (p, (1, 3, 12, 12), True), "R-Net": (r, (1, 3, 24, 24), False), "O-Net": (o, (1, 3, 48, 48), False)}
    rec = GroupEmotionRecognizer.default(backend="torch")
    if rec.regime is not None:
        out["EfficientNet-Lite0 trunk"] = (FeaturesOf(rec.branches[rec.regime.reads].model), (1, 3, 224, 224), False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--photos", type=int, default=24, help="benchmark photos whose inputs are used (default 24)")
    ap.add_argument("--rounds", type=int, default=7, help="timed passes per variant, taking turns (default 7)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from groupmood.runtime.export import plain_onnx
    from groupmood.runtime.graph import prelu_as_depthwise, without_absent_inputs
    from groupmood.runtime.session import settings

    load_start = loadavg()
    paths = [p for _, p in photo_paths(args.shared, args.photos)]
    inputs = _inputs(paths)
    rows = ["| net | inputs | plain export: ms | rewritten: ms | rewritten vs plain | largest output difference, "
            "rewritten | int8: ms | largest output difference, int8 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (net, shape, dynamic) in _nets().items():
            xs = inputs.get(name) or []
            if not xs:
                continue
            plain = plain_onnx(net.cpu().eval(), torch.zeros(*shape), dynamic_hw=dynamic)
            variants = {"plain": plain, "rewritten": prelu_as_depthwise(without_absent_inputs(plain))}
            quant = None if dynamic else _int8(plain, xs, Path(tmp))
            if quant is not None:
                variants["int8"] = quant
            sessions = {k: ort.InferenceSession(m, settings().session_options(fixed_shape=not dynamic),
                                                providers=["CPUExecutionProvider"]) for k, m in variants.items()}
            outs = {k: [s.run(None, {"input": x}) for x in xs] for k, s in sessions.items()}
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for _ in range(args.rounds):
                for k, s in sessions.items():
                    t = time.perf_counter()
                    for x in xs:
                        s.run(None, {"input": x})
                    times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

            def diff(k: str) -> str:
                return "n/a" if k not in outs else f"{max(float(np.max(np.abs(a - b), initial=0.0)) for o, r in zip(outs[k], outs['plain']) for a, b in zip(o, r)):.2g}"

            count = len(xs) if dynamic else sum(len(x) for x in xs)
            unit = "levels" if dynamic else ("crops" if name.endswith("Net") else "photos")
            int8 = f"{med['int8']:.1f}" if "int8" in med else "n/a"
            rows.append(f"| {name} | {count} {unit} | {med['plain']:.1f} | {med['rewritten']:.1f} | "
                        f"{med['plain'] / med['rewritten']:.2f}x | {diff('rewritten')} | {int8} | {diff('int8')} |")
            print(rows[-1], flush=True)
    notes = [f"Inputs: what each net gets on the first {len(paths)} of the 228 benchmark photos (`benchmarks/detect.py`'s "
             f"folders under `{args.shared}`), as the cascade runs with the authors' settings; the trunk: the default "
             "bundle's gate/scene branch's centre crops, one photo per call.",
             f"ONNX Runtime {ort.__version__}: {settings().describe()}; median of {args.rounds} passes over the inputs, "
             "variants taking turns. Rewritten: `prelu_as_depthwise(without_absent_inputs(...))`, what `groupmood export` "
             "writes into the cache. int8: QDQ, per-channel int8 weights, uint8 activations, min-max calibration on the "
             "same inputs (not tried on P-Net, whose input size changes).",
             "Output differences: largest absolute difference of any output (probabilities, box and landmark "
             "regressions, trunk features) from the plain export's."]
    publish_result("ONNX graph rewrites: each net with and without them", 1, load_start, notes, rows, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
