"""MTCNN networks (Zhang et al. 2016): P-Net, R-Net, O-Net.

Layer names follow the state dicts of the original Caffe models as converted in facenet-pytorch,
so those files load as they are. The dense layers read the feature map in Caffe's (W, H, C)
order, hence the permute before flattening. Inputs are RGB normalised as (x - 127.5) / 128.

:class:`TorchRunner` runs one of them as the numpy cascade (:mod:`.cascade`) calls its nets.
This module imports PyTorch: the detector and the cascade import it only where PyTorch runs the nets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class PNet(nn.Module):
    """Proposal net: fully convolutional, a 12x12 window per output cell at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (box regression (B,4,H',W'), face probability (B,H',W'))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), prob


class RNet(nn.Module):
    """Refine net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (box regression (B,4), face probability (B,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: final score, box regression and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (box regression (B,4), landmarks (B,10) as 5 x then 5 y, probability (B,))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


class TorchRunner:
    """A PyTorch net called as the cascade calls its nets: a (N, 3, H, W) float32 array in, float32 arrays out.

    The net runs on ``device`` in channels_last memory format (the faster layout for the convolutions
    and pooling of these small nets on a CPU), under inference mode; its outputs come back to the CPU as numpy.
    The net is moved to ``device`` (in place, as ``Module.to`` does). It takes any strided array: the
    cascade hands it an NCHW view of NHWC memory (``channels_last``), which needs no copy here.

    >>> runner = TorchRunner(RNet())
    >>> [out.shape for out in runner(np.zeros((2, 3, 24, 24), np.float32))]
    [(2, 4), (2,)]
    """

    channels_last = True

    def __init__(self, net: nn.Module, device: Any = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()

    def __repr__(self) -> str:
        return f"TorchRunner({type(self.net).__name__}, device={str(self.device)!r})"

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            t = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device)
            out = self.net(t.contiguous(memory_format=torch.channels_last))
            return tuple(o.float().cpu().numpy() for o in out)


def load_nets(weights_dir: str | Path | None = None, auto_fetch: bool = False,
              device: Any = "cpu") -> tuple[PNet, RNet, ONet]:
    """P-, R- and O-Net with the original weights, in eval mode.

    Args:
        weights_dir: a folder holding pnet.pt, rnet.pt, onet.pt (checked against the registered
            sha256); None: the weight cache.
        auto_fetch: fetch weights missing from the cache.
        device: where the nets go.

    Returns:
        (P-Net, R-Net, O-Net).

    >>> [type(net).__name__ for net in load_nets(auto_fetch=True)]
    ['PNet', 'RNet', 'ONet']
    """
    from .. import weights
    from ..checkpoint import read_state_dict

    nets = []
    for cls_, name in ((PNet, "mtcnn_pnet"), (RNet, "mtcnn_rnet"), (ONet, "mtcnn_onet")):
        src: str | Path = name
        if weights_dir is not None:
            src = Path(weights_dir) / weights.spec(name).filename
        sd = read_state_dict(src, sha256=weights.spec(name).sha256, auto_fetch=auto_fetch)
        net = cls_()
        net.load_state_dict(sd)
        nets.append(net.to(torch.device(device), memory_format=torch.channels_last).eval())
    return nets[0], nets[1], nets[2]
