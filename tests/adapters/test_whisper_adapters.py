"""Adapters of every type in Whisper's encoder, decoder or both, through the one injection seam: identity at
start, only adapters train, exact disable, LoRA merge/unmerge, adapter files bound to their base, placement
errors naming the key."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from builders import tiny_hf_ctc, tiny_whisper
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.errors import UserError

TEXTS = ["five three nine", "the lazy dog"]
PLACEMENTS = [("decoder:all", ["post"]), ("decoder:top:1", ["cross_attn", "self_attn"]), ("encoder:top:1", ["mha"]),
              ("encoder:all+decoder:all", ["ffn", "post"])]
CONFIGS = ([AdapterConfig(dim=4, blocks=b, positions=p) for b, p in PLACEMENTS]
           + [AdapterConfig(type="parallel", dim=4, blocks="decoder:all", positions=["post", "self_attn", "cross_attn"]),
              AdapterConfig(type="parallel", dim=4, blocks="encoder:top:1", positions=["post", "mha"]),
              AdapterConfig(type="lora", rank=2, blocks="encoder:all+decoder:all", targets="all"),
              AdapterConfig(type="lora", rank=2, blocks="decoder:top:1", targets="q,v,cross_k,cross_out")])


def _id(cfg: AdapterConfig) -> str:
    return f"{cfg.type}-{cfg.blocks}-{cfg.targets if cfg.type == 'lora' else '+'.join(cfg.positions)}"


@pytest.fixture(scope="module")
def inputs():
    model = tiny_whisper()
    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(2, 32000, generator=g)
    return model.featurizer()(waves, torch.tensor([32000, 20000]))


def _outputs(model, x, lengths):
    """(losses, transcripts, distillation against the base's teacher) of the whole model, without autograd."""
    with torch.no_grad():
        hidden = model.encode_prefix(x, lengths, 0)
        return model.losses_from(*hidden, 0, TEXTS), model.transcribe_from(*hidden, 0)


def _train(model, handle, x, lengths, steps=3):
    opt = torch.optim.Adam(handle.parameters(), lr=3e-2)
    handle.train()
    for _ in range(steps):
        loss = model.losses_from(*model.encode_prefix(x, lengths, 0), 0, TEXTS).mean() + handle.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.eval()


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_identity_at_start_only_adapters_train_and_disable_is_exact(inputs, cfg):
    x, lengths = inputs
    model = tiny_whisper()
    base_losses, base_text = _outputs(model, x, lengths)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    handle = inject_adapters(model, cfg)
    losses, text = _outputs(model, x, lengths)
    assert torch.equal(losses, base_losses) and text == base_text
    with torch.no_grad():
        hidden = model.encode_prefix(x, lengths, 0)
        teacher = model.teacher_from(*hidden, 0)
        kd = model.distill_from(*hidden, 0, pad_sequence(teacher, batch_first=True),
                                torch.tensor([len(t) for t in teacher]))
    assert float(kd.abs().max()) < 1e-6  # distillation is zero on a fresh (zero) adapter

    adapter_ids = {id(p) for p in handle.parameters()}
    _train(model, handle, x, lengths)
    for name, p in model.named_parameters():
        if id(p) in adapter_ids:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".adapter." not in k}
    assert after.keys() == base_state.keys() and all(torch.equal(after[k], base_state[k]) for k in base_state)

    trained, _ = _outputs(model, x, lengths)
    assert not torch.allclose(trained, base_losses)
    handle.disable()
    assert torch.equal(_outputs(model, x, lengths)[0], base_losses)
    handle.enable()
    assert torch.equal(_outputs(model, x, lengths)[0], trained)


def test_targets_are_the_named_stacks_modules():
    model = tiny_whisper()
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="encoder:top:1+decoder:0", positions=["ffn"]))
    assert handle.targeted == ["hf.model.encoder.layers.1.fc2", "hf.model.decoder.layers.0.fc2"]
    assert handle.block_ids == [1, 2] and handle.lowest_block == 1
    lora = inject_adapters(tiny_whisper(), AdapterConfig(type="lora", rank=2, blocks="decoder:0",
                                                         targets="q,ffn_in,cross_v"))
    assert lora.targeted == ["hf.model.decoder.layers.0.self_attn.q_proj",
                             "hf.model.decoder.layers.0.encoder_attn.v_proj", "hf.model.decoder.layers.0.fc1"]


def test_lora_merge_gives_the_adapted_outputs_and_unmerge_restores_the_base_exactly(inputs):
    x, lengths = inputs
    model = tiny_whisper()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, blocks="encoder:all+decoder:all",
                                                  targets="all"))
    _train(model, handle, x, lengths)
    adapted = _outputs(model, x, lengths)
    handle.merge()
    merged = _outputs(model, x, lengths)
    assert torch.allclose(merged[0], adapted[0], atol=1e-5) and merged[1] == adapted[1]
    handle.unmerge()
    handle.remove()
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items())


def test_save_load_round_trip_and_another_base_refused(inputs, tmp_path):
    x, lengths = inputs
    model = tiny_whisper()
    cfg = AdapterConfig(dim=4, blocks="decoder:all", positions=["cross_attn"])
    fingerprint = base_fingerprint(model)
    handle = inject_adapters(model, cfg)
    _train(model, handle, x, lengths)
    save_adapter(tmp_path / "a.pt", handle, cfg, fingerprint)
    trained = _outputs(model, x, lengths)

    fresh = tiny_whisper()
    loaded, loaded_cfg, _ = load_adapter(tmp_path / "a.pt", fresh)
    assert loaded_cfg == cfg and loaded.targeted == handle.targeted
    again = _outputs(fresh, x, lengths)
    assert torch.equal(again[0], trained[0]) and again[1] == trained[1]

    other = tiny_whisper(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(UserError, match="trained on another base model"):
        load_adapter(tmp_path / "a.pt", other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # untouched


def test_placement_errors_name_the_key():
    whisper = tiny_whisper()
    with pytest.raises(UserError, match=r"adapter.blocks: got 'all' \(this model has several stacks \(encoder, "
                                        r"decoder\): name the stack"):
        inject_adapters(whisper, AdapterConfig(dim=4, blocks="all"))
    with pytest.raises(UserError, match=r"adapter.positions: block 0 \(encoder hf.model.encoder.layers.0\) of model "
                                        r"whisper has no position 'cross_attn'; it has: post, mha, ffn"):
        inject_adapters(whisper, AdapterConfig(dim=4, blocks="encoder:all+decoder:all", positions=["cross_attn"]))
    with pytest.raises(UserError, match=r"adapter.positions: block 2 \(decoder hf.model.decoder.layers.0\) of model "
                                        r"whisper has no parallel position 'ffn'; it has: post, self_attn, cross_attn"):
        inject_adapters(whisper, AdapterConfig(type="parallel", dim=4, blocks="decoder:all", positions=["ffn"]))
    with pytest.raises(UserError, match=r"adapter.targets: got 'cross_q'; block 0 \(\S+\) of model whisper has no "
                                        r"linear layer 'cross_q'"):
        inject_adapters(whisper, AdapterConfig(type="lora", blocks="encoder:all+decoder:all", targets="cross_q"))
    with pytest.raises(UserError, match=r"adapter.blocks: got 'decoder:all' \(the model has no decoder blocks\)"):
        inject_adapters(tiny_hf_ctc(num_layers=2), AdapterConfig(dim=4, blocks="decoder:all"))
