"""bf16 is really bf16: under ``precision=bf16`` the model's linear layers compute in bfloat16 (CPU autocast), on the
evaluation path and in a training step, and a trained adapter's effect comes through it.

Adapters here have random non-zero weights: a fresh adapter adds exactly 0 in any precision, so a test built on
one cannot tell bf16 from fp32, nor an adapter that is applied from one that is not."""

from __future__ import annotations

import pytest
import torch

from builders import with_random_adapters
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.evaluate import model_outputs
from raysearch_adapters.train.loop import TrainSets, step_loss

ADAPTERS = [AdapterConfig(dim=4, positions=["post", "mha", "ffn"]),
            AdapterConfig(type="lora", rank=4, alpha=16.0, targets="all")]
# Log-probabilities of the tiny 2-layer model differ by ~0.03 between bf16 and fp32 (bf16 keeps ~3 significant
# digits per operation); the adapters here move them by ~1-2.
BF16_TOLERANCE = 0.1


class DtypeHooks:
    """Records the dtypes of the inputs and outputs of a few ``nn.Linear`` layers of the model, per call."""

    PATHS = {"ffn_in": "encoder.layers.1.ffn.net.1", "ffn_out": "encoder.layers.1.ffn.net.4", "head": "head"}

    def __init__(self, model):
        # Adapters may wrap these layers or their parents: the nn.Linear is the one at the path without base_layer.
        linears = {name.replace(".base_layer", ""): m for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear)}
        self.layers = {n: linears[path] for n, path in self.PATHS.items()}
        self.seen = []
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.seen.append((name, inputs[0].dtype, output.dtype))
        return hook

    def take(self):
        seen, self.seen = self.seen, []
        assert {n for n, _, _ in seen} == set(self.layers)  # every hooked layer ran
        return seen

    def remove(self):
        for h in self._handles:
            h.remove()


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("cfg", ADAPTERS, ids=lambda c: c.type)
def test_bf16_evaluation_computes_in_bf16_and_keeps_the_adapters_effect(model, feature_sets, cfg):
    fs = feature_sets["original"]
    handle = with_random_adapters(model, cfg)
    hooks = DtypeHooks(model)
    fp32 = model_outputs(model, fs, max_batch_seconds=1.0, precision="fp32")
    assert {(i, o) for _, i, o in hooks.take()} == {(torch.float32, torch.float32)}
    bf16 = model_outputs(model, fs, max_batch_seconds=1.0, precision="bf16")
    seen = hooks.take()
    assert {o for _, _, o in seen} == {torch.bfloat16}
    assert {i for n, i, _ in seen if n == "ffn_out"} == {torch.bfloat16}  # fed by a bf16 layer
    with handle.disabled():
        base_fp32 = model_outputs(model, fs, max_batch_seconds=1.0, precision="fp32")
        base_bf16 = model_outputs(model, fs, max_batch_seconds=1.0, precision="bf16")
    hooks.remove()

    assert all(o.dtype == torch.float32 for o in bf16)  # handed back in fp32 ...
    assert 0 < _max_diff(bf16, fp32) < BF16_TOLERANCE  # ... but computed in bf16: not the fp32 numbers
    effect_fp32 = [a - b for a, b in zip(fp32, base_fp32)]
    effect_bf16 = [a - b for a, b in zip(bf16, base_bf16)]
    assert max(float(e.abs().max()) for e in effect_fp32) > 5 * BF16_TOLERANCE  # the adapters matter ...
    assert _max_diff(effect_bf16, effect_fp32) < BF16_TOLERANCE  # ... as much under bf16


@pytest.mark.parametrize("cfg", ADAPTERS, ids=lambda c: c.type)
def test_a_bf16_training_step_computes_in_bf16_and_reaches_the_adapters(model, feature_sets, cfg):
    handle = with_random_adapters(model, cfg)
    sets = TrainSets(feature_sets["train"])
    view = BackboneView(model, None)
    hooks = DtypeHooks(model)
    handle.eval()  # no dropout: the two precisions see the same model
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        for p in handle.parameters():
            p.grad = None
        loss, _ = step_loss(view, handle, sets, ([0, 1, 2], [], []), 0.0, torch.device("cpu"), precision)
        loss.backward()
        losses[precision] = float(loss)
        grads[precision] = [p.grad.clone() for p in handle.parameters()]
        outputs = {o for _, _, o in hooks.take()}
        assert outputs == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
    hooks.remove()
    assert 0 < abs(losses["bf16"] - losses["fp32"]) < 0.01 * abs(losses["fp32"])
    assert all(g.abs().sum() > 0 for g in grads["bf16"])  # every adapter parameter gets a gradient in bf16
