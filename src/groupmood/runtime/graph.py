"""ONNX graph rewrites applied at export: the same values, computed in a form ONNX Runtime runs faster.

ONNX Runtime's CPU convolutions work in a blocked channel layout (NCHWc) and fuse a ReLU and an
addition into the convolution, but its PReLU is a plain broadcasting kernel outside that layout, with
a layout change before and after it: in MTCNN's nets the PReLUs and those layout changes took about as
long as the convolutions (``docs/performance.md``). :func:`prelu_as_depthwise` writes each PReLU after
a convolution as three 1x1 depthwise convolutions, which stay in the blocked layout:

    PReLU(h) = ReLU(1 * h) + (-a) * ReLU(-1 * h)

This is exact in IEEE float arithmetic, not an approximation: multiplying by 1 or -1 is exact, and of
the two terms one is always zero, so the sum rounds once, as ``a * h`` does (a zero may change sign,
which compares equal and changes no later value). ONNX Runtime fuses each ReLU into its depthwise
convolution and the addition into the last one.

:func:`without_absent_inputs` drops the empty names PyTorch's exporter writes for optional inputs it
leaves out (a ``Pad`` without a constant value): ONNX Runtime then folds a constant zero ``Pad`` into the
convolution after it (EfficientNet-Lite's TensorFlow "SAME" padding, :class:`~groupmood.models.layers.SameConv2d`),
which it does not do while the empty input is there.

This module needs the ``onnx`` package (as export does), not PyTorch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import NodeProto, TensorProto

__all__ = ["prelu_as_depthwise", "without_absent_inputs"]


def prelu_as_depthwise(model: bytes) -> bytes:
    """Rewrite each PReLU that reads a convolution's output as depthwise ReLU convolutions (module docstring).

    A PReLU is rewritten where its input is a ``Conv``'s output (so a 4-D, channels-second tensor) and its
    slopes are stored in the model, one per channel or one for all; every other node stays as it is.

    Args:
        model: a serialised ONNX model.

    Returns:
        The serialised rewritten model (``model`` itself when nothing matched).

    >>> import onnx
    >>> from onnx import helper, numpy_helper
    >>> w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    >>> a = numpy_helper.from_array(np.full((2, 1, 1), 0.25, np.float32), "a")
    >>> g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["h"]), helper.make_node("PRelu", ["h", "a"], ["y"])],
    ...                       "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 5])],
    ...                       [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 3, 3])], [w, a])
    >>> out = onnx.load_from_string(prelu_as_depthwise(helper.make_model(g).SerializeToString()))
    >>> [n.op_type for n in out.graph.node]
    ['Conv', 'Conv', 'Relu', 'Conv', 'Relu', 'Conv', 'Add']
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load_from_string(model)
    graph = m.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    nodes = []
    for node in graph.node:
        slope = _per_channel_slope(producer.get(node.input[0]), node, inits) if node.op_type == "PRelu" else None
        if slope is None:
            nodes.append(node)
            continue
        h, c, p = node.input[0], len(slope), f"{node.name or node.output[0]}/as_depthwise"
        graph.initializer.extend([numpy_helper.from_array(np.ones((c, 1, 1, 1), np.float32), f"{p}/one"),
                                  numpy_helper.from_array(-np.ones((c, 1, 1, 1), np.float32), f"{p}/minus_one"),
                                  numpy_helper.from_array(-slope.reshape(c, 1, 1, 1), f"{p}/minus_slope")])

        def depthwise(x: str, weight: str, out: str) -> NodeProto:
            return helper.make_node("Conv", [x, f"{p}/{weight}"], [out], name=f"{out}_conv", kernel_shape=[1, 1], group=c)

        nodes += [depthwise(h, "one", f"{p}/h"), helper.make_node("Relu", [f"{p}/h"], [f"{p}/pos"], name=f"{p}/relu_pos"),
                  depthwise(h, "minus_one", f"{p}/minus_h"),
                  helper.make_node("Relu", [f"{p}/minus_h"], [f"{p}/neg"], name=f"{p}/relu_neg"),
                  depthwise(f"{p}/neg", "minus_slope", f"{p}/neg_part"),
                  helper.make_node("Add", [f"{p}/neg_part", f"{p}/pos"], [node.output[0]], name=f"{p}/add")]
    if len(nodes) == len(graph.node):
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in read]:  # the rewritten PReLUs' slopes
        graph.initializer.remove(t)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _per_channel_slope(conv: NodeProto | None, prelu: NodeProto, inits: Mapping[str, TensorProto]) -> np.ndarray | None:
    """The (C,) float32 slopes of ``prelu`` when it reads a ``Conv``'s output and its slopes are stored in the model,
    per channel (shape (C, 1, 1) or (1, C, 1, 1)) or one for all; else None."""
    from onnx import numpy_helper

    if conv is None or conv.op_type != "Conv" or prelu.input[1] not in inits or len(conv.input) < 2 \
            or conv.input[1] not in inits:
        return None
    channels = int(inits[conv.input[1]].dims[0])
    slope = numpy_helper.to_array(inits[prelu.input[1]])
    if slope.dtype != np.float32:
        return None
    if slope.size == 1:
        return np.full(channels, slope.reshape(-1)[0], np.float32)
    if slope.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return slope.reshape(-1).copy()
    return None  # broadcast along another axis than the channels


def without_absent_inputs(model: bytes) -> bytes:
    """Drop each node's trailing empty input names (optional inputs left out): the same model, in the form
    ONNX Runtime's fusions recognise (module docstring).

    Args:
        model: a serialised ONNX model.

    Returns:
        The serialised model (``model`` itself when no node had one).

    >>> import onnx
    >>> from onnx import helper
    >>> g = helper.make_graph([helper.make_node("Pad", ["x", "pads", ""], ["y"])], "g",
    ...                       [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2]),
    ...                        helper.make_tensor_value_info("pads", onnx.TensorProto.INT64, [8])],
    ...                       [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 3, 3])])
    >>> list(onnx.load_from_string(without_absent_inputs(helper.make_model(g).SerializeToString())).graph.node[0].input)
    ['x', 'pads']
    """
    import onnx

    m = onnx.load_from_string(model)
    changed = False
    for node in m.graph.node:
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
            changed = True
    return m.SerializeToString() if changed else model
