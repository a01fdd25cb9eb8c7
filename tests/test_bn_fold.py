"""BatchNorm folding for inference: same outputs, every foldable layer folded, unsafe cases refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from groupmood.models import create_model, list_models, model_info
from groupmood.models.bn_fold import conv_bn_pairs, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

# the small registered models; the large global ones (vgg19, resnet101, bninception at 224) cost
# seconds each and share their conv -> BatchNorm wiring with torchvision's ResNet / MobileNetV2
LARGE = {"vgg19", "resnet101", "bninception", "efficientnet_lite2", "sphereface36", "sphereface64", "resnet101_48"}


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Trained-looking BatchNorm statistics and affine parameters, so folding has work to do."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", [n for n in list_models() if n not in LARGE])
def test_folding_keeps_outputs_of_every_small_model(name: str) -> None:
    info = model_info(name)
    model = _randomise_bn(create_model(name, num_classes=3))
    x = torch.randn(2, info.in_chans, *info.input_size)
    fused, n = fold_batchnorm(model, x[:1])
    bn2d = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert n == bn2d > 0 or (n == 0 and bn2d == 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn2d  # the original is untouched
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


class _Reuse(nn.Module):
    """A convolution whose raw output is also used after its BatchNorm: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Shared(nn.Module):
    """One convolution called twice, each time into its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1)
        self.bn3 = nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv2(self.bn2(self.conv(self.bn1(self.conv(x))))))


def test_reused_conv_output_is_left_alone() -> None:
    model = _randomise_bn(_Reuse())
    x = torch.randn(1, 3, 8, 8)
    assert conv_bn_pairs(model, x) == [("conv", "bn")]
    fused, n = fold_batchnorm(model, x)
    assert n == 0 and fused is model


def test_shared_conv_is_not_paired() -> None:
    model = _randomise_bn(_Shared())
    x = torch.randn(1, 3, 8, 8)
    assert conv_bn_pairs(model, x) == [("conv2", "bn3")]
    fused, n = fold_batchnorm(model, x)
    assert n == 1 and isinstance(fused.bn3, nn.Identity) and isinstance(fused.bn1, nn.BatchNorm2d)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_Shared().train(), torch.randn(1, 3, 8, 8))
