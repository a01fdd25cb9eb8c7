"""Large-margin functions, the annealed margin module and soft-label cross entropy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from groupmood.losses import (
    LargeMargin,
    annealed_lambda,
    chebyshev_cos_m,
    check_margin_m,
    psi,
    soft_target_cross_entropy,
)
from groupmood.models import create_model
from groupmood.models.heads import ClassifierHead


pytestmark = pytest.mark.usefixtures("one_thread")


def _psi_via_acos(theta: torch.Tensor, m: int) -> torch.Tensor:
    """Direct float64 definition: k = floor(m theta / pi), psi = (-1)^k cos(m theta) - 2k."""
    k = torch.floor(m * theta / math.pi).clamp(max=m - 1)
    return (-1.0) ** k * torch.cos(m * theta) - 2.0 * k


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_matches_acos_definition(m: int) -> None:
    theta = torch.linspace(0.0, math.pi, 4001, dtype=torch.float64)
    theta = torch.cat([theta, torch.arange(1, m, dtype=torch.float64) * math.pi / m])  # interval borders
    cos = torch.cos(theta)
    expected = _psi_via_acos(torch.acos(cos), m)
    torch.testing.assert_close(psi(cos, m), expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(psi(cos.float(), m), expected.float(), atol=2e-5, rtol=0)
    torch.testing.assert_close(chebyshev_cos_m(cos, m), torch.cos(m * theta), atol=1e-9, rtol=0)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_is_monotone_with_known_ends(m: int) -> None:
    cos = torch.cos(torch.linspace(0.0, math.pi, 2001, dtype=torch.float64))
    values = psi(cos, m)
    assert torch.all(values[1:] <= values[:-1] + 1e-12)
    assert values[0].item() == pytest.approx(1.0)
    assert values[-1].item() == pytest.approx(1.0 - 2.0 * m)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_cos_at_plus_minus_one_is_finite(m: int) -> None:
    cos = torch.tensor([-1.0, 1.0, -1.0 + 1e-7, 1.0 - 1e-7, 0.0, 1.0 + 1e-6, -1.0 - 1e-6], requires_grad=True)
    out = psi(cos, m)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()

    margin = LargeMargin(m, base=0.0, lambda_min=0.0).train()
    table = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, 0.2]], requires_grad=True)
    adjusted = margin(table, torch.tensor([0, 0]))
    adjusted.sum().backward()
    assert torch.isfinite(adjusted).all() and torch.isfinite(table.grad).all()
    assert adjusted[0, 0].item() == pytest.approx(1.0)
    assert adjusted[1, 0].item() == pytest.approx(1.0 - 2.0 * m)


@pytest.mark.parametrize("kind", ["lsoftmax", "asoftmax"])
def test_head_gradients_finite_when_features_align_with_weights(kind: str) -> None:
    head = ClassifierHead(4, 3, kind, m=4, base=0.0, lambda_min=0.0).train()
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(3, 4))
    x = torch.tensor([[2.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = F.cross_entropy(head(x, torch.tensor([0, 0, 1])), torch.tensor([0, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.fc.weight.grad).all()


def test_annealed_lambda_schedule() -> None:
    assert annealed_lambda(0).item() == pytest.approx(1000.0)
    assert annealed_lambda(10).item() == pytest.approx(1000.0 / 2.2)
    assert annealed_lambda(10**6).item() == pytest.approx(5.0)
    # SphereFace's PyTorch port: max(5, 1500 / (1 + 0.1 it))
    for it in (0, 1, 7, 100, 2990, 10**5):
        want = max(5.0, 1500.0 / (1.0 + 0.1 * it))
        assert annealed_lambda(it, base=1500, gamma=0.1).item() == pytest.approx(want, rel=1e-6)
    assert annealed_lambda(3, base=100, gamma=1.0, power=2.0, lambda_min=1.0).item() == pytest.approx(100 / 16)
    assert annealed_lambda(3, base=100, gamma=1.0, power=2.0, lambda_min=10.0).item() == pytest.approx(10.0)


def test_iteration_buffer_advances_and_round_trips() -> None:
    margin = LargeMargin(4, base=1500, gamma=0.1)
    assert "iteration" in margin.state_dict()
    cos = torch.rand(5, 3) * 2 - 1
    target = torch.tensor([0, 1, 2, 0, 1])
    margin.train()
    for _ in range(3):
        margin(cos, target)
    assert int(margin.iteration) == 3
    assert margin.current_lambda().item() == pytest.approx(1500 / 1.3)
    margin.eval()
    margin(cos, target)
    assert int(margin.iteration) == 3

    resumed = LargeMargin(4, base=1500, gamma=0.1)
    resumed.load_state_dict(margin.state_dict())
    assert int(resumed.iteration) == 3
    margin.train(), resumed.train()
    torch.testing.assert_close(margin(cos, target), resumed(cos, target), rtol=0, atol=0)

    model = create_model("resnet_tiny_48", num_classes=3, head="asoftmax")
    assert "head.margin.iteration" in model.state_dict()
    model.train()
    model(torch.randn(2, 1, 48, 48), torch.tensor([0, 2]))
    assert int(model.state_dict()["head.margin.iteration"]) == 1


def test_margin_rejects_bad_options() -> None:
    for bad in (0, 5, 2.0, True, "4"):
        with pytest.raises(ValueError, match="margin m"):
            check_margin_m(bad)
        with pytest.raises(ValueError, match="margin m"):
            LargeMargin(bad)
    with pytest.raises(ValueError, match="lambda_min"):
        LargeMargin(4, lambda_min=-1.0)
    with pytest.raises(ValueError, match="target"):
        LargeMargin(4)(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_soft_target_ce_equals_hard_ce_on_one_hot() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 8, generator=g)
    labels = torch.randint(0, 8, (16,), generator=g)
    one_hot = F.one_hot(labels, 8).float()
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(soft_target_cross_entropy(logits, one_hot, reduction),
                                   F.cross_entropy(logits, labels, reduction=reduction))
    votes = torch.tensor([[0.0, 6.0, 0.0, 4.0]])  # raw vote counts are renormalised
    expected = -(0.6 * F.log_softmax(logits[:1, :4], 1)[0, 1] + 0.4 * F.log_softmax(logits[:1, :4], 1)[0, 3])
    torch.testing.assert_close(soft_target_cross_entropy(logits[:1, :4], votes), expected)
    with pytest.raises(ValueError, match="batch, classes"):
        soft_target_cross_entropy(logits, one_hot[:, :4])
    with pytest.raises(ValueError, match="reduction"):
        soft_target_cross_entropy(logits, one_hot, "avg")


def _separable_batch(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """48x48 grey noise images; class 0 has horizontal stripes, 1 vertical stripes, 2 none."""
    y = torch.randint(0, 3, (n,), generator=g)
    stripes = (torch.arange(48) // 2 % 2).float() * 2 - 1
    x = 0.5 * torch.randn(n, 1, 48, 48, generator=g)
    x[y == 0] += stripes.view(48, 1)
    x[y == 1] += stripes.view(1, 48)
    return x, y


@pytest.mark.parametrize("kind", ["asoftmax", "lsoftmax"])
def test_tiny_model_trains_with_margin(kind: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = create_model("resnet_tiny_48", num_classes=3, head=kind, margin_m=4, base=20.0, gamma=0.5,
                         lambda_min=2.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x_eval, y_eval = _separable_batch(g, 64)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x_eval), y_eval).item()

    before = eval_loss()
    model.train()
    for _ in range(40):
        x, y = _separable_batch(g, 32)
        loss = F.cross_entropy(model(x, y), y)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert math.isfinite(after) and after < 0.5 * before
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert int(model.head.margin.iteration) == 40
