"""The adapter branch and NeMo's residual-add strategy, on their own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raysearch_adapters.adapters.modules import LinearAdapter, ResidualAdd


@pytest.mark.parametrize("norm_position", ["pre", "post"])
@pytest.mark.parametrize("activation", ["swish", "relu", "gelu", "tanh"])
def test_adapter_starts_at_zero_and_can_learn(norm_position, activation):
    torch.manual_seed(0)
    a = LinearAdapter(12, 4, activation=activation, norm_position=norm_position)
    x = torch.randn(3, 5, 12)
    assert torch.equal(a(x), torch.zeros_like(x))
    # The zero-initialised layer is the last one: up projection (pre) or the LayerNorm (post).
    last = a.module[-1]
    assert isinstance(last, nn.Linear if norm_position == "pre" else nn.LayerNorm)
    assert isinstance(a.module[0], nn.LayerNorm if norm_position == "pre" else nn.Linear)
    # The output is zero at the start, but the gradient must still reach the last layer.
    (a(x) * torch.randn_like(x)).sum().backward()
    assert last.weight.grad.abs().sum() > 0


def test_adapter_dropout_only_in_training():
    torch.manual_seed(0)
    a = LinearAdapter(8, 4, dropout=0.5)
    nn.init.normal_(a.module[-1].weight)
    x = torch.randn(4, 8)
    a.eval()
    assert torch.equal(a(x), a(x))
    a.train()
    assert (a(x) == 0).float().mean() > 0.2


def _branch() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(6, 6)


def test_residual_add_eval_is_plain_sum():
    f = _branch()
    res = ResidualAdd(stochastic_depth=0.5, l2_lambda=0.3).eval()
    x = torch.randn(2, 3, 6)
    for _ in range(5):
        assert torch.equal(res(x, f), x + f(x))
    assert res.pop_losses() == []


def test_stochastic_depth_drops_whole_branch_and_rescales():
    f = _branch()
    p = 0.4
    res = ResidualAdd(stochastic_depth=p).train()
    x = torch.randn(2, 3, 6)
    delta = f(x)
    torch.manual_seed(0)
    kept = 0
    n = 400
    for _ in range(n):
        d = res(x, f) - x
        if torch.allclose(d, torch.zeros_like(d)):
            continue
        # One draw for the whole batch, scaled so the expectation equals the eval-mode branch.
        assert torch.allclose(d, delta / (1 - p), atol=1e-6)
        kept += 1
    assert abs(kept / n - (1 - p)) < 0.08


def test_l2_term_in_training_only():
    f = _branch()
    res = ResidualAdd(l2_lambda=0.25).train()
    x = torch.randn(2, 3, 6)
    res(x, f)
    res(x, f)
    losses = res.pop_losses()
    assert len(losses) == 2
    expected = 0.25 * f(x).square().mean()
    assert torch.allclose(losses[0], expected)
    assert losses[0].requires_grad  # it trains the adapter
    assert res.pop_losses() == []  # popping resets
    res.eval()
    res(x, f)
    assert res.pop_losses() == []


@pytest.mark.parametrize("kwargs", [{"stochastic_depth": 1.0}, {"stochastic_depth": -0.1}, {"l2_lambda": -1.0}])
def test_residual_add_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ResidualAdd(**kwargs)
