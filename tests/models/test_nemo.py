"""The NeMo backbone on tiny .nemo files built here (CTC-BPE, RNNT-BPE, TDT, hybrid RNNT-CTC), against NeMo itself."""

from __future__ import annotations

import copy
import dataclasses
import io
import tarfile
from types import SimpleNamespace

import pytest
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import AdapterFileError, base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import AdapterConfig, ConfigError, load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.models.nemo import NemoASR, NemoModelError, NemoTokenizer
from raysearch_adapters.models.tokenizer import TokenizerError
from raysearch_adapters.results.placement import PlacementError
from raysearch_adapters.train.loop import AdapterNoOpError, check_in_forward_path

TEXTS = ["r x v", "six eight zero one", "the quick brown fox"]
ALL_POSITIONS = AdapterConfig(dim=4, blocks="all", positions=["post", "mha", "ffn"])
# Every adapter type in every position or linear layer the NeMo Conformer layer declares.
ADAPTERS = {"bottleneck": ALL_POSITIONS,
            "parallel": AdapterConfig(type="parallel", dim=4, blocks="all", positions=["post", "mha", "ffn"]),
            "lora": AdapterConfig(type="lora", rank=2, targets="all", blocks="all")}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bases(tiny_nemo):
    """name -> a loaded backbone; tests take deep copies."""
    out = {"ctc": NemoASR.load(str(tiny_nemo("ctc"))), "rnnt": NemoASR.load(str(tiny_nemo("rnnt")))}
    out["hybrid-rnnt"] = NemoASR.load(str(tiny_nemo("hybrid")), "rnnt")
    out["hybrid-ctc"] = NemoASR.load(str(tiny_nemo("hybrid")), "ctc")
    return out


@pytest.fixture(params=["ctc", "rnnt", "hybrid-ctc"])
def model(request, bases) -> NemoASR:
    return copy.deepcopy(bases[request.param])


def features(model: NemoASR, seed: int = 0):
    """Model features of three random waveforms of different lengths (padding in the batch)."""
    g = torch.Generator().manual_seed(seed)
    waves, lengths = torch.randn(3, 12000, generator=g), torch.tensor([12000, 9000, 5000])
    return model.featurizer()(waves, lengths)


def outputs(model: NemoASR, x, lengths):
    """Everything a trial uses from the model: per-utterance losses, transcripts, and the head's outputs."""
    view = BackboneView(model, None)
    with torch.no_grad():
        return view.losses(x, lengths, TEXTS), view.transcribe(x, lengths), model(x, lengths)[0]


def perturb(handle, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def assert_same(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])


@torch.no_grad()
def test_features_are_the_models_own_preprocessor_in_eval_mode(bases):
    model = bases["ctc"]
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(1, 11000, generator=g)
    model.asr.preprocessor.train()  # the featurizer must not dither even if someone left the model in train mode
    feats, n = model.featurizer()(wave, torch.tensor([11000]))
    model.asr.preprocessor.eval()
    ref, ref_n = model.asr.preprocessor(input_signal=wave, length=torch.tensor([11000]))
    assert int(n[0]) == int(ref_n[0]) == feats.shape[1] < ref.shape[2]  # pad_to=16 frames dropped
    assert torch.equal(feats[0], ref[0, :, : int(ref_n[0])].T)
    assert set(model.featurizer_key()) == {"featurizer", "config", "sample_rate", "weights_sha256"}


@pytest.mark.parametrize("name", ["ctc", "rnnt", "hybrid-ctc"])
@torch.no_grad()
def test_the_split_at_every_block_is_exact_and_equals_nemos_own_encoder(bases, name):
    model = bases[name]
    x, lengths = features(model)
    whole = model.encode_from(*model.encode_prefix(x, lengths, 0), 0)
    for i in range(3):
        one = x[i:i + 1, : lengths[i]], lengths[i:i + 1]
        ref, ref_len = model.asr.encoder(audio_signal=one[0].transpose(1, 2), length=one[1])
        per_k = [model.encode_from(*model.encode_prefix(*one, k), k) for k in range(3)]
        for enc, enc_len in per_k:  # the prefix cache's case: one utterance, split anywhere: bit for bit
            assert torch.equal(enc, per_k[0][0]) and torch.equal(enc_len, ref_len)
        torch.testing.assert_close(per_k[0][0], ref, rtol=0, atol=0)
        n = int(ref_len[0])  # in a padded batch: only float rounding of other shapes
        torch.testing.assert_close(whole[0][i, :, :n], ref[0, :, :n], rtol=1e-5, atol=1e-5)


def test_blocks_and_positions_are_the_conformer_layers(bases):
    blocks = bases["rnnt"].adaptable_blocks()
    assert [(b.index, b.name, b.width) for b in blocks] == [(0, "asr.encoder.layers.0", 32),
                                                           (1, "asr.encoder.layers.1", 32)]
    assert blocks[1].positions == {"post": "asr.encoder.layers.1", "mha": "asr.encoder.layers.1.self_attn",
                                   "ffn": "asr.encoder.layers.1.feed_forward2"}


def test_lora_targets_nemos_own_linear_layers_and_parallel_adapters_sit_beside_the_module(bases):
    model = copy.deepcopy(bases["ctc"])
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="q,v,ffn_out", blocks="top:1"))
    assert handle.targeted == ["asr.encoder.layers.1.self_attn.linear_q", "asr.encoder.layers.1.self_attn.linear_v",
                               "asr.encoder.layers.1.feed_forward2.linear2"]
    handle.remove()
    handle = inject_adapters(model, AdapterConfig(type="parallel", dim=4, blocks="0", positions=["mha"]))
    (w,) = handle.wrappers
    torch.nn.init.normal_(w.adapter.module[-1].weight)
    x, lengths = features(model)
    hidden, hidden_lengths = model.encode_prefix(x, lengths, 0)
    pos_emb, _, att_mask = model._masks(hidden, hidden_lengths)
    q = model.asr.encoder.layers[0].norm_self_att(hidden)
    args = dict(query=q, key=q, value=q, mask=att_mask, pos_emb=pos_emb)
    with torch.no_grad():  # ConformerLayer passes the attention's input as query=
        assert torch.allclose(w(**args), w.base_layer(**args) + w.adapter(q))


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_identity_at_initialisation_and_exact_disable(model, adapter):
    x, lengths = features(model)
    base = outputs(model, x, lengths)
    handle = inject_adapters(model, ADAPTERS[adapter])
    assert len(handle.targeted) == {"bottleneck": 6, "parallel": 6, "lora": 16}[adapter]  # 2 layers
    assert_same(outputs(model, x, lengths), base)  # zero-initialised: exactly the base model
    perturb(handle)
    changed = outputs(model, x, lengths)
    assert not torch.equal(changed[2], base[2])
    with handle.disabled():
        assert_same(outputs(model, x, lengths), base)
    assert torch.equal(outputs(model, x, lengths)[2], changed[2])  # enabled again


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_only_adapter_parameters_train_and_the_no_op_guard_sees_each_wrapper(model, adapter):
    x, lengths = features(model)
    fingerprint = base_fingerprint(model)
    handle = inject_adapters(model, dataclasses.replace(ADAPTERS[adapter], blocks="top:1"))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in handle.parameters()}
    view = BackboneView(model, None)
    with pytest.raises(AdapterNoOpError, match="do not change their module's output"):
        check_in_forward_path(view, handle, x, lengths)
    opt = torch.optim.Adam(handle.parameters(), lr=1e-2)
    handle.train()
    for _ in range(2):
        loss = view.losses(x, lengths, TEXTS).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # each wrapper's own modules (a post wrapper's base layer holds the inner ffn wrapper)
    adapter_modules = {id(m) for w in handle.wrappers
                       for m in set(w.modules()) - set(w.base_layer.modules()) - {w}}
    assert not any(m.training for m in model.asr.modules() if id(m) not in adapter_modules)  # no BatchNorm drift
    assert base_fingerprint(model) == fingerprint
    check_in_forward_path(view, handle, x, lengths)


def test_adapter_file_round_trip_and_another_base_is_refused(bases, tmp_path):
    model = copy.deepcopy(bases["rnnt"])
    x, lengths = features(model)
    cfg = AdapterConfig(dim=4, blocks="all", positions=["post"])
    handle = inject_adapters(model, cfg)
    perturb(handle)
    expected = outputs(model, x, lengths)
    path = tmp_path / "adapter.pt"
    save_adapter(path, handle, cfg, base_fingerprint(model))
    fresh = copy.deepcopy(bases["rnnt"])
    load_adapter(path, fresh)
    assert_same(outputs(fresh, x, lengths), expected)
    other = copy.deepcopy(bases["hybrid-rnnt"])  # same architecture, other weights and head
    with pytest.raises(AdapterFileError, match="trained on another base model"):
        load_adapter(path, other)


@pytest.mark.parametrize("name", ["ctc", "rnnt"])
def test_distillation_is_zero_on_the_base_and_trains_the_adapters(bases, name):
    model = copy.deepcopy(bases[name])
    x, lengths = features(model)
    view = BackboneView(model, None)
    with torch.no_grad():
        teacher = view.teacher(x, lengths)
    t_lengths = torch.tensor([t.shape[0] for t in teacher])
    padded = torch.nn.utils.rnn.pad_sequence(teacher, batch_first=True)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="all", positions=["post"]))
    assert torch.allclose(view.distill(x, lengths, padded, t_lengths), torch.zeros(3), atol=1e-5)
    perturb(handle)
    kd = view.distill(x, lengths, padded, t_lengths)
    assert (kd > 1e-3).all()
    kd.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.parameters())
    with handle.disabled(), torch.no_grad():
        assert torch.allclose(view.distill(x, lengths, padded, t_lengths), torch.zeros(3), atol=1e-5)


def test_rnnt_teacher_follows_the_greedy_path(bases):
    model = bases["rnnt"]
    x, lengths = features(model)
    with torch.no_grad():
        rows = BackboneView(model, None).teacher(x, lengths)[0]
        encoded, enc_lengths = model.forward_from(*model.encode_prefix(x, lengths, 0), 0)
        hyp = model._rnnt_hypotheses(encoded, enc_lengths)[0]
    t, u, label = rows[:, 0].long(), rows[:, 1].long(), rows[:, 2].long()
    assert rows.shape[0] == int(enc_lengths[0]) + len(hyp.y_sequence)  # a node per frame, a node per token
    assert (t.diff() >= 0).all() and (u.diff() >= 0).all()
    assert label[label >= 0].tolist() == [int(y) for y in hyp.y_sequence]
    top = rows[:, 3 + 64: 3 + 128]
    assert rows.shape[1] == 3 + 2 * 64 and (top.diff(dim=1) <= 0).all()  # top-64 of 129 tokens, sorted
    # where the teacher emitted a token, that token is its most likely one at that node
    assert torch.equal(rows[label >= 0, 3].long(), label[label >= 0])


def test_hybrid_head_is_chosen_by_a_key(bases):
    x, lengths = features(bases["hybrid-rnnt"])
    rnnt, ctc = outputs(bases["hybrid-rnnt"], x, lengths), outputs(bases["hybrid-ctc"], x, lengths)
    assert ctc[2].shape[-1] == 129 and rnnt[2].shape[1] == 32  # CTC log-probs vs the encoder output
    assert not torch.equal(rnnt[0], ctc[0])
    assert load_config(overrides=["model.name=nemo", "model.checkpoint=x.nemo", "model.nemo.head=ctc"])
    with pytest.raises(ConfigError, match=r"^model\.nemo\.head: got 'tdt'; allowed: auto, rnnt, ctc"):
        load_config(overrides=["model.name=nemo", "model.checkpoint=x.nemo", "model.nemo.head=tdt"])


def test_a_head_the_model_lacks_is_refused(tiny_nemo):
    with pytest.raises(NemoModelError, match=r"^model\.nemo\.head: got 'ctc', but .*tiny_rnnt\.nemo \(EncDecRNNTBPEModel\) "
                                             r"has no ctc decoder; allowed: auto, rnnt$"):
        NemoASR.load(str(tiny_nemo("rnnt")), "ctc")


def test_tdt_decodes_and_distils_on_cpu_and_says_training_needs_a_gpu(tiny_nemo):
    model = NemoASR.load(str(tiny_nemo("tdt")))
    assert model.is_tdt and model._token_count() == 129
    x, lengths = features(model)
    view = BackboneView(model, None)
    with torch.no_grad():
        assert len(view.transcribe(x, lengths)) == 3
        teacher = view.teacher(x, lengths)
    assert teacher[0].shape[1] == 3 + 2 * 64 + 5  # + the 5 durations' distribution
    t_lengths = torch.tensor([t.shape[0] for t in teacher])
    kd = view.distill(x, lengths, torch.nn.utils.rnn.pad_sequence(teacher, batch_first=True), t_lengths)
    assert torch.allclose(kd, torch.zeros(3), atol=1e-5)
    with pytest.raises(UserError, match="NeMo's TDT losses run on CUDA only"):
        view.losses(x, lengths, TEXTS)


# ---- the model's own tokenizer


def _spm_tokenizer(tmp_path, texts, lower_case=True):
    from nemo.collections.common.tokenizers import SentencePieceTokenizer

    from raysearch_adapters.models.nemo_build import train_tokenizer

    folder = train_tokenizer(texts, tmp_path, vocab_size=40, lower_case=lower_case)
    return SentencePieceTokenizer(str(folder / "tokenizer.model"))


def test_tokenizer_puts_text_in_the_models_case(tmp_path):
    texts = ["HELLO THERE WORLD", "HOW ARE YOU TODAY", "WHERE DID THEY GO", "GOOD DAY TO YOU"] * 20
    upper = NemoTokenizer(SimpleNamespace(tokenizer=_spm_tokenizer(tmp_path / "u", texts, lower_case=False)))
    assert upper.case == "upper" and upper.decode(upper.encode("hello world")) == "hello world"
    assert upper.unsupported_chars("hello q") == {"q"}


def test_a_transcript_the_tokenizer_cannot_encode_names_the_manifest_line(tmp_path):
    texts = ["abcdefghijklmnopqrstuvwxy"] * 50  # no z, no apostrophe
    tok = NemoTokenizer(SimpleNamespace(tokenizer=_spm_tokenizer(tmp_path, texts)))
    assert tok.unsupported_chars("zero isn't it") == {"z", "'"}
    with pytest.raises(TokenizerError, match=r"^data\.new_train new\.json: characters the tokenizer cannot encode: "
                                              r"\"'\" on lines 3; 'z' on lines 3; allowed"):
        tok.check_texts(["bad", "a cab", "zero isn't it"], "data.new_train new.json")


# ---- bad input: one error each, naming the file or key


def _rewrite_nemo(src, dest, edit):
    """A copy of the .nemo archive ``src`` with its model_config.yaml passed through ``edit``."""
    with tarfile.open(src, "r:*") as tin, tarfile.open(dest, "w:") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("model_config.yaml"):
                data = edit(data.decode()).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    return dest


def test_an_unsupported_model_class_is_refused_naming_the_file(tiny_nemo, tmp_path):
    bad = _rewrite_nemo(tiny_nemo("ctc"), tmp_path / "classifier.nemo",
                        lambda y: y.replace("ctc_bpe_models.EncDecCTCModelBPE", "classification_models.EncDecClassificationModel"))
    with pytest.raises(NemoModelError, match=rf"^model\.checkpoint: {bad} is a NeMo EncDecClassificationModel; supported: "
                                             r"EncDecCTCModel, EncDecCTCModelBPE, .*EncDecHybridRNNTCTCBPEModel"):
        NemoASR.load(str(bad))
    other = _rewrite_nemo(tiny_nemo("ctc"), tmp_path / "squeeze.nemo",
                          lambda y: y.replace("modules.ConformerEncoder", "modules.SqueezeformerEncoder"))
    with pytest.raises(NemoModelError, match=r"has the encoder SqueezeformerEncoder; supported: ConformerEncoder"):
        NemoASR.load(str(other))


def test_a_corrupt_nemo_is_refused_naming_the_file(tiny_nemo, tmp_path):
    garbage = tmp_path / "garbage.nemo"
    garbage.write_bytes(b"not a tar archive at all" * 100)
    with pytest.raises(NemoModelError, match=rf"^model\.checkpoint: {garbage}: not a readable \.nemo file \(ReadError"):
        NemoASR.load(str(garbage))
    data = tiny_nemo("ctc").read_bytes()
    truncated = tmp_path / "truncated.nemo"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(NemoModelError, match=rf"^model\.checkpoint: {truncated}: "):
        NemoASR.load(str(truncated))
    with pytest.raises(NemoModelError, match=r"no such \.nemo file"):
        NemoASR.load(str(tmp_path / "missing.nemo"))


def test_a_pretrained_name_nemo_cannot_get_is_one_error_naming_it():
    with pytest.raises(NemoModelError, match=r"^model\.checkpoint: 'no_such_model_xyz' is not a file, and NeMo could "
                                             r"not get the pretrained model of that name \("):
        NemoASR.load("no_such_model_xyz")
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: got 'demo'; model\.name=nemo takes a \.nemo file"):
        load_config(overrides=["model.name=nemo", "model.checkpoint=demo"])


def test_blocks_and_positions_the_model_does_not_have_are_refused(bases):
    model = copy.deepcopy(bases["ctc"])
    with pytest.raises(PlacementError, match=r"^adapter\.blocks: .*block 5 does not exist"):
        inject_adapters(model, AdapterConfig(blocks="0,5"))
    with pytest.raises(ConfigError, match=r"^adapter\.positions\[0\]: got 'conv'; allowed: post, mha, ffn"):
        load_config(overrides=["adapter.positions=[conv]"])
    assert not any(type(m).__name__ == "AdapterWrapper" for m in model.modules())  # nothing was changed


def test_a_merged_lora_is_a_nemo_file_plain_nemo_restores_with_the_adapted_outputs(bases, tmp_path):
    model = copy.deepcopy(bases["hybrid-ctc"])
    x, lengths = features(model)
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=2, targets="all", blocks="all"))
    perturb(handle)
    adapted = outputs(model, x, lengths)
    path, how = handle.merge_and_unload().save_export(tmp_path, {"winner_trial_id": "t1"})
    assert path == tmp_path / "model.nemo" and f"ASRModel.restore_from('{path}')" in how
    reloaded = NemoASR.load_export(path)
    assert reloaded.head == "ctc"  # the head the search decoded with, not the hybrid's default
    again = outputs(reloaded, x, lengths)
    assert again[1] == adapted[1]
    torch.testing.assert_close(again[2], adapted[2], rtol=0, atol=1e-5)
    from nemo.collections.asr.models import ASRModel

    plain = ASRModel.restore_from(str(path), map_location="cpu")
    assert type(plain).__name__ == "EncDecHybridRNNTCTCBPEModel" and not any("lora" in k for k in plain.state_dict())


@pytest.mark.parametrize("position", ["cross_attn", "self_attn"])
def test_a_position_the_nemo_model_does_not_have_is_refused_before_the_search_naming_the_key(
        bases, tiny_nemo, small_demo, tmp_path, position):
    from raysearch_adapters.search.preflight import preflight
    from builders import tiny_search_overrides

    cfg = load_config([], tiny_search_overrides(small_demo, tiny_nemo("ctc"), tmp_path / "f", tmp_path, "bad",
                                                "model.name=nemo", f"search.space.position.choices=[post,{position}]"))
    with pytest.raises(ConfigError, match=rf"^search\.space\.position / adapter\.positions: got '{position}'; model "
                                          r"nemo has the positions ffn, mha, post in every block \(block 0, encoder "
                                          rf"asr\.encoder\.layers\.0, has no position '{position}'\)"):
        preflight(cfg, bases["ctc"])
    model = copy.deepcopy(bases["ctc"])
    with pytest.raises(UserError, match=rf"{position}"):
        inject_adapters(model, AdapterConfig(positions=[position]))
    assert not any(type(m).__name__.endswith("Wrapper") for m in model.modules())  # nothing was changed


@pytest.mark.parametrize("cfg, message", [
    (AdapterConfig(type="lora"), r"adapter\.type: got 'lora'; NeMo's LinearAdapter is a serial bottleneck .* "
                                 r"`raysearch-adapters export RESULTS_DIR` merges it"),
    (AdapterConfig(type="parallel"), r"adapter\.type: got 'parallel'; .* no NeMo equivalent"),
    (AdapterConfig(positions=["post", "ffn"]), r"adapter\.positions: the winner has adapters at ffn; NeMo has no "
                                               r"equivalent"),
    (AdapterConfig(activation="tanh"), r"adapter\.activation: got 'tanh'"),
])
def test_a_winner_nemo_has_no_adapter_for_is_refused_by_export_nemo_naming_the_key(cfg, message):
    from raysearch_adapters.export.nemo import NemoExportError, check_exportable

    with pytest.raises(NemoExportError, match=rf"^best_adapter\.pt: {message}"):
        check_exportable(cfg, "best_adapter.pt")
    check_exportable(AdapterConfig(dim=8, positions=["post"]), "best_adapter.pt")


def test_the_printed_nemo_code_restores_a_file_given_with_a_tilde(tmp_path, monkeypatch):
    from raysearch_adapters.export.nemo import load_snippet

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.nemo").write_bytes(b"")
    code = load_snippet("~/m.nemo", tmp_path / "a.pt", "raysearch")
    assert f"ASRModel.restore_from({str(tmp_path / 'm.nemo')!r}, override_config_path=cfg)" in code
    assert "from_pretrained" not in code
    assert "ASRModel.from_pretrained('stt_en_conformer_ctc_small', return_config=True)" in load_snippet(
        "stt_en_conformer_ctc_small", tmp_path / "a.pt", "raysearch")


def test_the_search_prints_an_evaluate_command_that_names_the_nemo_model_section(tmp_path):
    from raysearch_adapters.search.summary import load_instructions

    cfg = load_config(overrides=["model.name=nemo", "model.checkpoint=stt_en_conformer_ctc_small",
                                 "model.nemo.head=ctc"])
    how = load_instructions(cfg, tmp_path / "best_adapter.pt")
    assert how.startswith("raysearch-adapters evaluate model.name=nemo model.checkpoint=stt_en_conformer_ctc_small "
                          f"model.nemo.head=ctc --adapter {tmp_path / 'best_adapter.pt'} --manifest MANIFEST")
    assert f"NeMo: raysearch-adapters export-nemo {tmp_path}" in how
