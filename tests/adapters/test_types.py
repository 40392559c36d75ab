"""LoRA and parallel adapters on every CTC backbone: what is targeted, merge/unmerge, rank dropout, adapter-only
files, the prefix split, and bad configs refused before the model is touched (identity at start, exact disable
and only adapters training are test_inject's, for every type)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adapter_helpers import PATHS, assert_untouched, build, config_id, ctc_steps, inputs, run, snapshot
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.layers import AdapterLayer, NotMergeableError, ParallelWrapper
from raysearch_adapters.adapters.lora import LoraWrapper
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.errors import UserError

# The module LoRA wraps for each target, spelled out (not taken from adaptable_blocks): the Conformer's
# q/k/v/out are weights its nn.MultiheadAttention reads itself (the module is wrapped), the rest nn.Linear.
LORA_PATHS = {
    "conformer": {"q": "encoder.layers.{i}.mha.attn", "k": "encoder.layers.{i}.mha.attn",
                  "v": "encoder.layers.{i}.mha.attn", "out": "encoder.layers.{i}.mha.attn",
                  "ffn1_in": "encoder.layers.{i}.ffn1.net.1", "ffn1_out": "encoder.layers.{i}.ffn1.net.4",
                  "ffn_in": "encoder.layers.{i}.ffn.net.1", "ffn_out": "encoder.layers.{i}.ffn.net.4"},
    "wav2vec2": {"q": "encoder.transformer.layers.{i}.attention.q_proj",
                 "k": "encoder.transformer.layers.{i}.attention.k_proj",
                 "v": "encoder.transformer.layers.{i}.attention.v_proj",
                 "out": "encoder.transformer.layers.{i}.attention.out_proj",
                 "ffn_in": "encoder.transformer.layers.{i}.feed_forward.intermediate_dense",
                 "ffn_out": "encoder.transformer.layers.{i}.feed_forward.output_dense"},
    "hf_ctc": {"q": "hf.wav2vec2.encoder.layers.{i}.attention.q_proj",
               "k": "hf.wav2vec2.encoder.layers.{i}.attention.k_proj",
               "v": "hf.wav2vec2.encoder.layers.{i}.attention.v_proj",
               "out": "hf.wav2vec2.encoder.layers.{i}.attention.out_proj",
               "ffn_in": "hf.wav2vec2.encoder.layers.{i}.feed_forward.intermediate_dense",
               "ffn_out": "hf.wav2vec2.encoder.layers.{i}.feed_forward.output_dense"},
}
def _base_state(model) -> dict:
    """The base model's weights and buffers, seen through the adapter layers (keys as without them)."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if ".adapter." not in k}


@pytest.mark.parametrize("targets", ["q", "out", "q,v", "ffn_in,ffn_out", "all"])
def test_lora_targets_exactly_the_named_linear_layers(backend, targets):
    model = build(backend)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets=targets, blocks="top:2"))
    names = list(LORA_PATHS[backend]) if targets == "all" else targets.split(",")
    expected = list(dict.fromkeys(LORA_PATHS[backend][n].format(i=i) for i in (2, 3) for n in names))
    assert handle.targeted == expected and handle.lowest_block == 2
    assert all(isinstance(w, LoraWrapper) for w in handle.wrappers)
    d = model.adaptable_blocks()[0].width
    ffn = 2 * d  # the tiny models' feed-forward width
    sizes = {"q": (d, d), "k": (d, d), "v": (d, d), "out": (d, d), "ffn_in": (d, ffn), "ffn_out": (ffn, d),
             "ffn1_in": (d, ffn), "ffn1_out": (ffn, d)}
    assert handle.num_params == 2 * sum(2 * sum(sizes[n]) for n in names)  # rank 2: r (in + out) per target, 2 blocks


def test_conformer_q_k_v_are_row_slices_of_the_fused_in_proj_weight():
    model = build("conformer")
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="v", blocks="0"))
    (w,) = handle.wrappers
    with torch.no_grad():
        w.adapter.updates["v"].lora_B.weight.normal_()
    (delta,) = w.adapter()
    d = model.adaptable_blocks()[0].width
    assert delta.shape == w.base_layer.in_proj_weight.shape
    assert delta[: 2 * d].abs().max() == 0 and delta[2 * d:].abs().max() > 0  # only v's rows


def test_parallel_branch_is_fed_the_modules_input():
    model = build("wav2vec2")
    handle = inject_adapters(model, AdapterConfig(type="parallel", dim=4, blocks="0", positions=["ffn"]))
    (w,) = handle.wrappers
    assert isinstance(w, ParallelWrapper)
    torch.nn.init.normal_(w.adapter.module[-1].weight)
    x = torch.randn(1, 5, model.adaptable_blocks()[0].width)
    assert torch.allclose(w(x), w.base_layer(x) + w.adapter(x))  # beside the module, not on its output


@pytest.mark.parametrize("targets", ["q,v", "all"])
def test_lora_merge_gives_the_same_logits_and_unmerge_restores_the_base_exactly(backend, targets):
    model = build(backend)
    x, lengths = inputs(model)
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets=targets, dropout=0.3))
    ctc_steps(model, handle, x, lengths)
    adapted = run(model, x, lengths)
    handle.merge()
    assert (run(model, x, lengths) - adapted).abs().max() <= 1e-5
    assert not all(torch.equal(v, originals[k]) for k, v in _base_state(model).items())  # in the base weights
    handle.unmerge()
    assert all(torch.equal(v, originals[k]) for k, v in _base_state(model).items())  # bit for bit
    assert torch.equal(run(model, x, lengths), adapted)


def test_merge_and_unload_leaves_a_plain_model_with_the_merged_logits(backend, tmp_path):
    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="all", blocks="top:2"))
    ctc_steps(model, handle, x, lengths)
    adapted = run(model, x, lengths)
    merged = handle.merge_and_unload()
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules())
    assert merged.state_dict().keys() == build(backend).state_dict().keys()
    assert all(p.requires_grad for p in merged.parameters())  # as before the injection
    assert (run(merged, x, lengths) - adapted).abs().max() <= 1e-5
    path, how = merged.save_export(tmp_path, {"note": "test"})  # the backbone's own format, read back
    assert how
    reloaded = type(merged).load_export(path)
    assert torch.equal(run(reloaded, x, lengths), run(merged, x, lengths))


def test_wavlm_lora_runs_its_attention_with_updated_weights_and_merges(tmp_path):
    """WavLM's attention hands its q/k/v/out weights to F.multi_head_attention_forward (FusedWeight targets).

    Its linears take another kernel when their weights need a gradient (the last bits differ, even under
    no_grad), so the exact comparisons hold only because the search's base model comes frozen for real."""
    from raysearch_adapters.config import ModelConfig
    from raysearch_adapters.models.registry import load_base_model
    from builders import save_tiny_hf_ctc

    folder = save_tiny_hf_ctc(tmp_path, "wavlm", 0, 2)
    model = load_base_model(ModelConfig(name="hf_ctc", checkpoint=str(folder)))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x, lengths = inputs(model)
    base = run(model, x, lengths)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="q,k,v,out", blocks="top:1"))
    assert handle.targeted == ["hf.wavlm.encoder.layers.1.attention"]
    assert torch.equal(run(model, x, lengths), base)  # B = 0
    ctc_steps(model, handle, x, lengths)
    adapted = run(model, x, lengths)
    assert not torch.allclose(adapted, base)
    handle.merge()
    assert (run(model, x, lengths) - adapted).abs().max() <= 1e-5
    handle.unmerge()
    handle.disable()
    assert torch.equal(run(model, x, lengths), base)


@pytest.mark.parametrize("cfg", [AdapterConfig(dim=4), AdapterConfig(type="parallel", dim=4)], ids=config_id)
def test_bottleneck_and_parallel_refuse_to_merge_naming_the_type(backend, cfg):
    model = build(backend)
    handle = inject_adapters(model, cfg)
    assert not handle.mergeable
    snap = snapshot(model)
    with pytest.raises(NotMergeableError, match=rf"adapter type '{cfg.type}' cannot be merged into the base weights: "
                                                r"its branch is non-linear"):
        handle.merge()
    assert_untouched(model, snap)


def test_a_merged_lora_cannot_be_disabled_silently(backend):
    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="q,v"))
    handle.merge()
    handle.disable()
    with pytest.raises(RuntimeError, match="merged into the base weights: unmerge"):
        run(model, x, lengths)
    handle.enable()
    handle.remove()  # unmerges first: the original base
    assert torch.equal(run(model, x, lengths), run(build(backend), x, lengths))


@pytest.mark.parametrize("cfg", [AdapterConfig(type="parallel", dim=4, positions=["post", "mha", "ffn"], blocks="every:2"),
                                 AdapterConfig(type="lora", rank=2, targets="all", blocks="every:2")], ids=config_id)
def test_adapter_only_file_reloads_onto_a_fresh_base(backend, cfg, tmp_path):
    model = build(backend)
    x, lengths = inputs(model)
    fingerprint = base_fingerprint(model)
    handle = inject_adapters(model, cfg)
    ctc_steps(model, handle, x, lengths)
    assert base_fingerprint(model) == fingerprint  # adapters are not the base
    save_adapter(tmp_path / "a.pt", handle, cfg, fingerprint)
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(raw["state_dict"]) == {n for n, _ in handle.named_parameters()}  # adapter weights only
    fresh = build(backend)
    loaded, loaded_cfg, _ = load_adapter(tmp_path / "a.pt", fresh)
    assert loaded_cfg == cfg and loaded.targeted == handle.targeted
    assert torch.equal(run(fresh, x, lengths), run(model, x, lengths))


def test_lora_below_the_prefix_block_is_refused_and_above_it_matches_the_whole_model(backend):
    from raysearch_adapters.train.prefix import TopOfModel

    model = build(backend)
    x, lengths = inputs(model)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="all", blocks="1,3"))
    ctc_steps(model, handle, x, lengths)
    with pytest.raises(UserError, match="found adapters below block 2"):
        TopOfModel(model, 2)
    with torch.no_grad():
        full = model(x, lengths)[0]
        hidden, h_len = model.encode_prefix(x, lengths, handle.lowest_block)
        assert torch.equal(TopOfModel(model, 1)(hidden, h_len)[0], full)


# ---- bad input: one clear error naming the key, before anything is changed

def _limited(model, monkeypatch, **fields):
    blocks = [dataclasses.replace(b, **fields) if b.index == 2 else b for b in model.adaptable_blocks()]
    monkeypatch.setattr(model, "adaptable_blocks", lambda: blocks)


def test_a_lora_target_a_block_does_not_have(backend):
    model = build(backend)
    snap = snapshot(model)
    names = ", ".join(LORA_PATHS[backend])
    with pytest.raises(UserError, match=rf"^adapter.targets: got 'q,query'; block 0 \(\S+\) of model \S+ has no linear "
                                        rf"layer 'query'; it has: {names} \(or: all\)$"):
        inject_adapters(model, AdapterConfig(type="lora", targets="q,query"))
    assert_untouched(model, snap)


def test_a_block_listing_no_linear_layers_takes_no_lora(backend, monkeypatch):
    model = build(backend)
    _limited(model, monkeypatch, linears={})
    snap = snapshot(model)
    with pytest.raises(UserError, match=r"adapter.type: got 'lora'; block 2 .* lists no linear layers"):
        inject_adapters(model, AdapterConfig(type="lora", targets="q"))
    assert_untouched(model, snap)  # blocks 0 and 1 were valid, and are not wrapped either


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(backend, rank):
    model = build(backend)
    with pytest.raises(UserError, match=rf"^adapter.rank: got {rank}; must be a whole number >= 1$"):
        inject_adapters(model, AdapterConfig(type="lora", rank=rank))


def test_a_parallel_position_that_does_not_exist(backend, monkeypatch):
    model = build(backend)
    with pytest.raises(UserError, match=r"^adapter.positions\[0\]: got 'conv'; allowed: post, mha, ffn, self_attn, cross_attn$"):
        inject_adapters(model, AdapterConfig(type="parallel", positions=["conv"]))
    _limited(model, monkeypatch, parallel={"ffn": "x"})
    snap = snapshot(model)
    with pytest.raises(UserError, match=r"^adapter.positions: block 2 \(encoder \S+\) of model \S+ has no parallel position "
                                        r"'mha'; it has: ffn$"):
        inject_adapters(model, AdapterConfig(type="parallel", positions=["mha"]))
    assert_untouched(model, snap)


def test_a_lora_target_that_is_no_linear_layer_is_a_backbone_error(backend, monkeypatch):
    model = build(backend)
    _limited(model, monkeypatch, linears={"q": PATHS[backend]["ffn"].format(i=2)})
    with pytest.raises(UserError, match=r"lists '\S+' as a LoRA target, which is a \w+, not an nn.Linear"):
        inject_adapters(model, AdapterConfig(type="lora", targets="q"))


def test_lora_has_no_stochastic_depth_or_l2():
    with pytest.raises(UserError, match=r"^adapter.stochastic_depth: got 0.2; has no effect on type lora \(lora has no branch output"):
        AdapterConfig(type="lora", stochastic_depth=0.2).validate("adapter")
