"""Injection into both real backbones: identity at start, only adapters train, placement, removal."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adapter_helpers import (NUM_LAYERS, PATHS, TYPE_CASES, assert_untouched, build, config_id, ctc_steps, inputs,
                             run, snapshot)
from raysearch_adapters.adapters.inject import AdapterWrapper, inject_adapters, parse_blocks
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import BlockInfo

POSITION_SETS = [["post"], ["mha"], ["ffn"], ["post", "mha", "ffn"]]
# Bottleneck adapters at each position set, and every other type at each of its positions or targets.
CONFIGS = [AdapterConfig(dim=4, positions=p) for p in POSITION_SETS] + TYPE_CASES


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_identity_at_start_then_adapters_train_and_disable_restores_base(backend, cfg):
    model = build(backend)
    x, lengths = inputs(model)
    base_out = run(model, x, lengths)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    handle = inject_adapters(model, cfg)
    assert torch.equal(run(model, x, lengths), base_out)  # zero-initialised (LoRA: B = 0): exactly the base

    adapter_ids = {id(p) for p in handle.parameters()}
    ctc_steps(model, handle, x, lengths)
    for name, p in model.named_parameters():
        if id(p) in adapter_ids:
            assert p.requires_grad and p.grad is not None
        else:
            assert not p.requires_grad and p.grad is None, name
    # Base weights and buffers (BatchNorm statistics included) never change.
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
             if ".adapter." not in k}
    assert after.keys() == base_state.keys()
    assert all(torch.equal(after[k], base_state[k]) for k in base_state)

    trained = run(model, x, lengths)
    assert not torch.allclose(trained, base_out)
    handle.disable()
    assert torch.equal(run(model, x, lengths), base_out)
    handle.enable()
    assert torch.equal(run(model, x, lengths), trained)


@pytest.mark.parametrize("spec,blocks", [("all", [0, 1, 2, 3]), ("top:2", [2, 3]), ("bottom:1", [0]),
                                         ("every:2", [0, 2]), ("window:1-3", [1, 2]), ("3,1", [1, 3])])
def test_placement_targets_exactly_the_expected_modules(backend, spec, blocks):
    model = build(backend)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks=spec, positions=["ffn", "post"]))
    # Block order, then the backbone's position order (post before ffn), whatever the config's order.
    expected = [PATHS[backend][pos].format(i=i) for i in blocks for pos in ("post", "ffn")]
    assert handle.targeted == expected
    assert handle.lowest_block == blocks[0]
    assert [w.name for w in handle.wrappers] == expected
    # The wrappers really sit at those paths (seen through any wrapper above them).
    wrapped = [n.replace(".base_layer", "") for n, m in model.named_modules() if isinstance(m, AdapterWrapper)]
    assert sorted(wrapped) == sorted(expected)


def test_second_handle_inside_wrapped_blocks_and_removal_in_reverse(backend):
    model = build(backend)
    x, lengths = inputs(model)
    base_out = run(model, x, lengths)
    snap = snapshot(model)
    outer = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1", positions=["post"]))
    inner = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1", positions=["mha"]))
    assert inner.targeted == [PATHS[backend]["mha"].format(i=NUM_LAYERS - 1)]
    assert isinstance(outer.wrappers[0].base_layer.get_submodule(inner.targeted[0].rsplit(".", 1)[1]),
                      AdapterWrapper)
    assert torch.equal(run(model, x, lengths), base_out)
    inner.remove()
    outer.remove()
    assert_untouched(model, snap)


def test_parameters_count_and_percent(backend):
    model = build(backend)
    base_params = sum(p.numel() for p in model.parameters())
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:2", positions=["post", "mha"]))
    width = model.adaptable_blocks()[0].width
    per_adapter = 2 * width + width * 4 + 4 * width  # LayerNorm + down + up (no biases, as in NeMo)
    assert handle.num_params == 4 * per_adapter
    assert sum(p.numel() for p in handle.parameters()) == handle.num_params
    assert handle.percent_of_base == pytest.approx(100 * 4 * per_adapter / base_params)
    walked = {id(p) for w in handle.wrappers for p in w.adapter.parameters()}
    assert {id(p) for p in handle.parameters()} == walked
    assert {id(p) for p in model.parameters() if p.requires_grad} == walked


def test_train_mode_keeps_base_in_eval(backend):
    model = build(backend)  # its dropouts (and wav2vec2's LayerDrop) are non-zero
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(dim=4, positions=["post", "mha", "ffn"], dropout=0.3))
    handle.train()
    adapter_modules = {id(m) for w in handle.wrappers for m in [*w.adapter.modules(), w.residual]}
    for m in model.modules():
        assert m.training == (id(m) in adapter_modules), type(m).__name__
    # The base is deterministic in adapter training: two passes agree (the adapters are still zero).
    assert torch.equal(model(x, lengths)[0], model(x, lengths)[0])


def test_prefix_split_matches_forward_with_adapters(backend):
    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:2", positions=["post", "mha", "ffn"]))
    ctc_steps(model, handle, x, lengths, steps=2)
    with torch.no_grad():
        full, full_len = model(x, lengths)
        hidden, h_len = model.encode_prefix(x, lengths, handle.lowest_block)
        out, out_len = model.forward_from(hidden, h_len, handle.lowest_block)
    assert torch.equal(out, full) and torch.equal(out_len, full_len)


def test_l2_term_collected_in_training_only(backend):
    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(dim=4, l2_lambda=0.5, positions=["post", "ffn"]))
    ctc_steps(model, handle, x, lengths, steps=2)  # move the adapters off zero
    handle.train()
    model(x, lengths)
    aux = handle.aux_loss()
    assert aux.item() > 0 and aux.requires_grad
    assert handle.aux_loss().item() == 0.0  # reset after reading
    aux_only = torch.optim.SGD(handle.parameters(), lr=1.0)
    aux_only.zero_grad()
    aux.backward()
    aux_only.step()
    model(x, lengths)
    assert handle.aux_loss().item() < aux.item()  # the penalty shrinks the adapter outputs
    handle.eval()
    model(x, lengths)
    assert handle.aux_loss().item() == 0.0


# LoRA's rank dropout drops components of its updates at random in the same way.
@pytest.mark.parametrize("cfg", [AdapterConfig(dim=4, stochastic_depth=0.5, positions=["post"]),
                                 AdapterConfig(type="lora", rank=4, targets="all", dropout=0.5)],
                         ids=["stochastic-depth", "lora-rank-dropout"])
def test_stochastic_depth_in_training_only(backend, cfg):
    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, cfg)
    ctc_steps(model, handle, x, lengths, steps=2)
    handle.disable()
    base = run(model, x, lengths)
    handle.enable()
    evaluated = run(model, x, lengths)
    assert torch.equal(run(model, x, lengths), evaluated)
    handle.train()
    torch.manual_seed(0)
    outs = [run(model, x, lengths) for _ in range(12)]
    # Passes differ (branches dropped at random) and none equals the eval output: a kept
    # branch is scaled by 1 / (1 - p), a dropped one is missing.
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert all(not torch.equal(o, evaluated) for o in outs)
    assert not torch.equal(base, evaluated)


def test_remove_restores_original_tree(backend):
    model = build(backend)
    x, lengths = inputs(model)
    base_out = run(model, x, lengths)
    snap = snapshot(model)
    handle = inject_adapters(model, AdapterConfig(dim=4, positions=["post", "mha", "ffn"]))
    ctc_steps(model, handle, x, lengths, steps=1)
    handle.remove()
    assert_untouched(model, snap)
    assert torch.equal(run(model, x, lengths), base_out)
    inject_adapters(model, AdapterConfig(dim=4))  # and it can be adapted again


@pytest.mark.parametrize("cfg", [
    AdapterConfig(blocks="top:9"), AdapterConfig(blocks="window:3-2"), AdapterConfig(blocks="1,7"),
    AdapterConfig(positions=["post", "post"]), AdapterConfig(positions=["conv"]), AdapterConfig(dim=0),
], ids=["top9", "window", "index", "duplicate-position", "unknown-position", "dim0"])
def test_invalid_config_fails_before_touching_the_model(backend, cfg):
    model = build(backend)
    snap = snapshot(model)
    with pytest.raises(UserError):
        inject_adapters(model, cfg)
    assert_untouched(model, snap)


def test_position_missing_in_one_block_fails_before_any_block_is_wrapped(backend, monkeypatch):
    model = build(backend)
    blocks = model.adaptable_blocks()
    # A backbone whose block 2 has no attention position (the last-checked blocks must be
    # validated before the first ones are wrapped).
    limited = [dataclasses.replace(b, positions={k: v for k, v in b.positions.items() if k != "mha"})
               if b.index == 2 else b for b in blocks]
    monkeypatch.setattr(model, "adaptable_blocks", lambda: limited)
    snap = snapshot(model)
    with pytest.raises(UserError, match=r"block 2 .* has no position 'mha'; it has: post, ffn"):
        inject_adapters(model, AdapterConfig(positions=["mha"]))
    assert_untouched(model, snap)


def test_second_injection_on_same_modules_fails(backend):
    model = build(backend)
    inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    snap = snapshot(model)
    with pytest.raises(UserError, match="already has an adapter"):
        inject_adapters(model, AdapterConfig(dim=4, blocks="all"))
    assert_untouched(model, snap)


def test_model_without_blocks_fails(backend, monkeypatch):
    model = build(backend)
    monkeypatch.setattr(model, "adaptable_blocks", lambda: [])
    with pytest.raises(UserError, match="no adaptable blocks"):
        inject_adapters(model, AdapterConfig())


@pytest.mark.parametrize("spec,expected", [("all", [0, 1, 2, 3]), ("top:1", [3]), ("bottom:4", [0, 1, 2, 3]),
                                           ("every:3", [0, 3]), ("every:9", [0]), ("window:0-4", [0, 1, 2, 3]),
                                           ("2", [2]), (" 0, 2 ", [0, 2])])
def test_parse_blocks(spec, expected):
    assert parse_blocks(spec, NUM_LAYERS) == expected


@pytest.mark.parametrize("spec", ["top:0", "top:5", "bottom:0", "every:0", "window:2-2", "window:0-5", "4",
                                  "1,1", "-1", "first:2", "", "top:two"])
def test_parse_blocks_errors_name_spec_size_and_forms(spec):
    with pytest.raises(UserError) as e:
        parse_blocks(spec, NUM_LAYERS)
    msg = str(e.value)
    assert repr(spec) in msg and "4 blocks" in msg and "top:K" in msg and "window:A-B" in msg
    assert "\n" not in msg


def test_tuple_outputs_get_the_adapter_on_item_zero():
    # wav2vec2's layers and attention return (tensor, position_bias); only item 0 is adapted.
    model = build("wav2vec2")
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="0", positions=["mha"]))
    w = handle.wrappers[0]
    torch.nn.init.normal_(w.adapter.module[-1].weight)
    x = torch.randn(1, 5, model.adaptable_blocks()[0].width)
    out = w(x)
    base = w.base_layer(x)
    assert isinstance(out, tuple) and out[1] is base[1] is None
    assert torch.allclose(out[0], base[0] + w.adapter(base[0]))


def test_blockinfo_paths_exist(backend):
    model = build(backend)
    for b in model.adaptable_blocks():
        assert isinstance(b, BlockInfo)
        for path in b.positions.values():
            model.get_submodule(path)
