"""The export-time graph rewrites (runtime/graph.py): PReLU as depthwise ReLU convolutions, no absent inputs.

The rewrite is exact in IEEE float arithmetic (the module's docstring says why), so the rewritten graph must give
the plain export's outputs within one float32 unit in the last place (times the suite's kernel factor) on real
inputs, under ONNX Runtime on whatever CPU runs this.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from numerics import float32_tolerance, max_abs_diff

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from groupmood.detect.detector import _NETS, _record_inputs  # noqa: E402
from groupmood.runtime.export import plain_onnx  # noqa: E402
from groupmood.runtime.graph import prelu_as_depthwise, without_absent_inputs  # noqa: E402
from groupmood.runtime.session import OPSET  # noqa: E402


def _ops(model: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(model).graph.node]


def _run(model: bytes, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


@pytest.fixture(scope="module")
def mtcnn_exports(detector, astronaut):
    """Each MTCNN net exported plainly and rewritten, and the real inputs it got on the astronaut photo."""
    nets = detector.torch_nets()
    inputs = _record_inputs(nets, [astronaut])
    out = {}
    for net, (name, _, size, dynamic) in zip(nets, _NETS):
        plain = plain_onnx(net.cpu().eval(), torch.zeros(1, 3, size, size), dynamic_hw=dynamic)
        out[name] = ((plain, prelu_as_depthwise(plain)), inputs[name])
    return out


def test_rewrite_replaces_each_prelu_after_a_convolution(mtcnn_exports):
    """P-, R- and O-Net: every PReLU that follows a convolution is gone (one per convolution); those after a dense
    layer stay."""
    dense_prelus = {"mtcnn_pnet": 0, "mtcnn_rnet": 1, "mtcnn_onet": 1}
    for name, ((plain, rewritten), _) in mtcnn_exports.items():
        before, after = _ops(plain), _ops(rewritten)
        rewritten_prelus = before.count("PRelu") - dense_prelus[name]
        assert rewritten_prelus >= 3 and after.count("PRelu") == dense_prelus[name], name
        assert after.count("Conv") == before.count("Conv") + 3 * rewritten_prelus
        assert after.count("Relu") == before.count("Relu") + 2 * rewritten_prelus


def test_rewritten_nets_give_the_plain_exports_outputs(mtcnn_exports):
    """Every output of every net on its real inputs (P-Net's pyramid levels, R- and O-Net's crops of a photo) within
    one float32 ULP of the output's magnitude (times the kernel factor) of the plain export's."""
    for name, ((plain, rewritten), inputs) in mtcnn_exports.items():
        for x in inputs:
            want, got = _run(plain, x.numpy()), _run(rewritten, x.numpy())
            for w, g in zip(want, got):
                assert max_abs_diff(g, w) <= float32_tolerance(w, 0.0), name


def _conv_prelu(slope: np.ndarray) -> bytes:
    """A Conv (4 output channels) and a PRelu with ``slope``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    a = numpy_helper.from_array(slope.astype(np.float32), "a")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["h"]), helper.make_node("PRelu", ["h", "a"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4, 6, 6])], [w, b, a])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


@pytest.mark.parametrize("slope", [np.array([-0.5, 0.0, 0.25, 1.5]).reshape(4, 1, 1), np.array([0.3])],
                         ids=["per-channel", "one-slope"])
def test_rewrite_keeps_values_for_any_slope(slope):
    """Negative, zero, small and above-one slopes, per channel or one for all: the PReLU's values."""
    model = _conv_prelu(slope)
    rewritten = prelu_as_depthwise(model)
    assert "PRelu" not in _ops(rewritten)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    want, got = _run(model, x)[0], _run(rewritten, x)[0]
    assert max_abs_diff(got, want) <= float32_tolerance(want, 0.0)


def test_rewrite_leaves_a_slope_along_another_axis_alone():
    """Slopes of shape (6,) broadcast along the width, not the channels: that PReLU is not rewritten."""
    model = _conv_prelu(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert prelu_as_depthwise(model) == model


def test_absent_inputs_dropped_and_zero_pad_folded_into_the_convolution(tmp_path):
    """EfficientNet-Lite's "SAME" padding exports as a zero Pad with an absent constant value; without that empty
    input ONNX Runtime folds the Pad into the convolution (no Pad left after its optimisations), with the same
    outputs."""
    from groupmood.models.layers import SameConv2d

    net = torch.nn.Sequential(SameConv2d(3, 8, 3, 2), torch.nn.ReLU()).eval()
    plain = plain_onnx(net, torch.zeros(1, 3, 16, 16))
    assert "Pad" in _ops(plain)
    tidy = without_absent_inputs(plain)
    assert all(name for n in onnx.load_from_string(tidy).graph.node for name in n.input)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(tidy, opts, providers=["CPUExecutionProvider"])
    assert "Pad" not in [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = net.double()(torch.from_numpy(x).double()).numpy()
        # the float32 dot-product error bound: fan-in x unit roundoff x sum of |w x| (padded input, as the layer pads)
        conv = net[0]
        magnitude = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.from_numpy(np.abs(x)).double(), [0, 1, 0, 1]),
                                               conv.weight.abs(), stride=2).max().item()
    bound = 27 * float(np.finfo(np.float32).eps) / 2 * magnitude
    assert max_abs_diff(_run(tidy, x)[0], want) <= bound + float32_tolerance(want, 0.0)
