"""The distillation losses against KL divergences written out here from their definitions.

Each backbone's distillation term is KL(p_base || p_adapted) averaged over the valid positions of an
utterance (frames for CTC, teacher-forced tokens for Whisper, lattice nodes for NeMo's transducers).
The references below are plain torch from the formula ``sum p (log p - log q)``, never the project's
helpers, and every case is built so that the likely slips give another number: the reversed
direction KL(q || p) differs from the right one by a wide margin, utterances have padding that must
be ignored and several valid positions (a sum is not a mean), and Whisper's student puts most of its
mass outside the teacher's k tokens (renormalising one side only changes the value)."""

from __future__ import annotations

import copy

import pytest
import torch

from builders import tiny_whisper
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.models.ctc import frame_kl
from raysearch_adapters.models.nemo import RNNT_TEACHER_TOPK
from raysearch_adapters.models.whisper import TEACHER_TOP_K


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities: sum p (log p - log q)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def assert_discriminates(right: torch.Tensor, *wrong: torch.Tensor) -> None:
    """Each ``wrong`` value is far from the reference ``right`` somewhere (so matching the reference says something)."""
    for w in wrong:
        assert (right - w).abs().max() > 0.05, (right, w)


# ---- CTC: the whole per-frame posterior


def test_ctc_frame_kl_is_kl_of_the_teacher_from_the_student_mean_over_valid_frames():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3])
    # The teacher is peaked (scale 4) and the student flat-ish (scale 0.5): KL(p||q) and KL(q||p) differ.
    teacher = (4.0 * torch.randn(2, 5, 6, generator=g)).log_softmax(-1)
    student = (0.5 * torch.randn(2, 7, 6, generator=g)).log_softmax(-1)  # padded further than the teacher
    teacher[1, 3:] = (20.0 * torch.randn(2, 6, generator=g)).log_softmax(-1)  # padding: must not count
    student[1, 3:] = (20.0 * torch.randn(4, 6, generator=g)).log_softmax(-1)
    student[0, 5:] = (20.0 * torch.randn(2, 6, generator=g)).log_softmax(-1)

    forward = torch.stack([kl(teacher[b, :n], student[b, :n]).mean() for b, n in enumerate(lengths.tolist())])
    reverse = torch.stack([kl(student[b, :n], teacher[b, :n]).mean() for b, n in enumerate(lengths.tolist())])
    summed = torch.stack([kl(teacher[b, :n], student[b, :n]).sum() for b, n in enumerate(lengths.tolist())])
    over_all = kl(teacher, student[:, :5]).mean(1)  # padded frames counted
    assert_discriminates(forward, reverse, summed, over_all)

    got = frame_kl(student, lengths, teacher, lengths)
    assert torch.allclose(got, forward, atol=1e-6, rtol=1e-5)
    assert torch.equal(frame_kl(teacher, lengths, teacher, lengths), torch.zeros(2))


# ---- Whisper: top-k of the teacher, both sides renormalised over those k tokens

PROMPT_LEN = 2  # <|startoftranscript|> <|notimestamps|> (the English tiny model)


@pytest.fixture(scope="module")
def whisper():
    model = tiny_whisper()
    assert len(model.prompt) == PROMPT_LEN and not model.multilingual
    return model


def _whisper_teacher(vocab: int, targets, width: int, k: int, seed: int = 0) -> torch.Tensor:
    """Teacher rows [B, width, 1 + 2k] as ``teacher_from`` lays them out (token, top-k ids, their logits),
    with random distinct ids, logits spread wide (scale 3), and garbage in the padding rows."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(targets), width, 1 + 2 * k)
    for b, t in enumerate(targets):
        for j in range(width):
            ids = torch.randperm(vocab, generator=g)[:k]
            logits = (3.0 * torch.randn(k, generator=g)).sort(descending=True).values
            if j >= len(t):  # padding: a valid id (it is gathered) and logits that would dominate a sum
                logits = 50.0 * logits
            rows[b, j, 0] = float(t[j]) if j < len(t) else 0.0
            rows[b, j, 1:1 + k] = ids.float()
            rows[b, j, 1 + k:] = logits
    return rows


@torch.no_grad()
def test_whisper_distillation_is_the_renormalised_top_k_kl_of_the_teacher_mean_over_tokens(whisper):
    model, k = whisper, TEACHER_TOP_K
    vocab = model.hf.config.vocab_size
    g = torch.Generator().manual_seed(1)
    targets = [[40, 41, 42, 43, 44, model.eot], [50, 51, model.eot]]
    teacher = _whisper_teacher(vocab, targets, 6, k)
    lengths = torch.tensor([len(t) for t in targets])
    # Full 30 s windows: the cached frames are the encoder's input as they are.
    feats = torch.randn(2, model.window_frames, model.hf.config.num_mel_bins, generator=g)
    frames = torch.full((2,), model.window_frames)

    # Reference: transformers' own forward, one utterance at a time, teacher-forced on the teacher's tokens.
    forward, reverse, summed, student_unnormalised, teacher_unnormalised = [], [], [], [], []
    for b, t in enumerate(targets):
        ids = torch.tensor([model.prompt + t[:-1]])
        logits = model.hf(input_features=feats[b:b + 1].transpose(1, 2), decoder_input_ids=ids).logits[0]
        logits = logits[PROMPT_LEN - 1:PROMPT_LEN - 1 + len(t)]  # the positions predicting each target token
        top_ids = teacher[b, :len(t), 1:1 + k].long()
        p = teacher[b, :len(t), 1 + k:].log_softmax(-1)  # renormalised over the k tokens
        q = logits.gather(-1, top_ids).log_softmax(-1)  # the student's logits at those k tokens, renormalised
        forward.append(kl(p, q).mean())
        reverse.append(kl(q, p).mean())
        summed.append(kl(p, q).sum())
        student_unnormalised.append(kl(p, logits.log_softmax(-1).gather(-1, top_ids)).mean())
        teacher_unnormalised.append((p.exp() * (teacher[b, :len(t), 1 + k:] - q)).sum(-1).mean())
    forward, reverse, summed = torch.stack(forward), torch.stack(reverse), torch.stack(summed)
    assert_discriminates(forward, reverse, summed, torch.stack(student_unnormalised), torch.stack(teacher_unnormalised))

    hidden, hidden_lengths = model.encode_prefix(feats, frames, 0)
    got = model.distill_from(hidden, hidden_lengths, 0, teacher, lengths)
    assert torch.allclose(got, forward, atol=1e-5, rtol=1e-4)


# ---- NeMo transducers: top-k plus the rest of the mass at each lattice node (and TDT's durations)


@pytest.fixture(scope="module")
def nemo_models(tmp_path_factory):
    """kind -> a tiny NeMo transducer (rnnt, tdt) as the project's backbone, built here (no files)."""
    pytest.importorskip("nemo.collections.asr")
    from raysearch_adapters.models.nemo import NemoASR
    from raysearch_adapters.models.nemo_build import build_model, train_tokenizer

    texts = ["the quick brown fox jumps over the lazy dog", "six eight zero one", "r x v",
             "a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 8
    tokenizer = train_tokenizer(texts, tmp_path_factory.mktemp("nemo-tokenizer"), vocab_size=128)
    return {kind: NemoASR(build_model(kind, tokenizer)) for kind in ("rnnt", "tdt")}


def _nemo_reference(model, x, lengths, teacher, teacher_lengths):
    """Per utterance: (KL(p||q), KL(q||p), the KL summed over nodes) over the teacher's nodes, from NeMo's own
    encoder, prediction network and joint on the whole lattice [T, U+1] of the teacher's tokens."""
    asr = model.asr
    encoded, enc_lengths = asr.encoder(audio_signal=x.transpose(1, 2), length=lengths)
    v, kk = model.tokenizer.vocab_size + 1, RNNT_TEACHER_TOPK  # the tokens and the blank; TDT's durations after
    out = []
    for b, n in enumerate(teacher_lengths.tolist()):
        rows = teacher[b, :n]
        t, u, label = rows[:, 0].long(), rows[:, 1].long(), rows[:, 2].long()
        tokens = label[label >= 0][None]
        g, _, _ = asr.decoder(targets=tokens if tokens.numel() else torch.zeros(1, 1, dtype=torch.long),
                              target_length=torch.tensor([tokens.shape[1]]))
        lattice = asr.joint.joint(encoded[b:b + 1, :, :int(enc_lengths[b])].transpose(1, 2), g.transpose(1, 2))[0]
        joint = lattice[t, u]  # [nodes, V + 1 (+ durations)]
        q_all = joint[:, :v].log_softmax(-1)
        ids = rows[:, 3:3 + kk].long()
        p_top, q_top = rows[:, 3 + kk:3 + 2 * kk], q_all.gather(-1, ids)
        # The k tokens and one bucket for the rest of the mass, on each side.
        p = torch.cat([p_top, (1 - p_top.exp().sum(-1, keepdim=True)).clamp(min=1e-30).log()], -1)
        q = torch.cat([q_top, (1 - q_top.exp().sum(-1, keepdim=True)).clamp(min=1e-30).log()], -1)
        f, r = kl(p, q), kl(q, p)
        if model.is_tdt:
            p_dur, q_dur = rows[:, 3 + 2 * kk:], joint[:, v:].log_softmax(-1)
            f, r = f + kl(p_dur, q_dur), r + kl(q_dur, p_dur)
        out.append((f.mean(), r.mean(), f.sum()))
    return [torch.stack(c) for c in zip(*out)]


@pytest.mark.parametrize("kind", ["rnnt", "tdt"])
@torch.no_grad()
def test_nemo_lattice_distillation_is_the_mean_node_kl_of_the_teacher(nemo_models, kind):
    model = copy.deepcopy(nemo_models[kind])
    g = torch.Generator().manual_seed(0)
    waves, wave_lengths = torch.randn(3, 12000, generator=g), torch.tensor([12000, 9000, 5000])
    x, lengths = model.featurizer()(waves, wave_lengths)
    view = BackboneView(model, None)
    teacher_list = view.teacher(x, lengths)  # the base model's own path and distributions
    teacher_lengths = torch.tensor([t.shape[0] for t in teacher_list])
    teacher = torch.nn.utils.rnn.pad_sequence(teacher_list, batch_first=True)
    assert teacher.shape[-1] == 3 + 2 * RNNT_TEACHER_TOPK + (5 if kind == "tdt" else 0)
    top_mass = teacher_list[0][:, 3 + RNNT_TEACHER_TOPK:3 + 2 * RNNT_TEACHER_TOPK].exp().sum(-1)
    assert (top_mass < 0.99).all()  # the rest bucket holds mass: it counts

    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="all", positions=["post"]))
    # A student far from its teacher (fresh adapters add exactly zero): KL(p||q) ~5 nats, KL(q||p) ~3.5. (Much
    # further, the student's mass outside the teacher's top k falls under fp32's resolution of 1 - sum(q_top).)
    for p in handle.parameters():
        p.add_(torch.randn(p.shape, generator=g))
    forward, reverse, summed = _nemo_reference(model, x, lengths, teacher, teacher_lengths)
    assert_discriminates(forward, reverse, summed)
    got = view.distill(x, lengths, teacher, teacher_lengths)
    assert torch.allclose(got, forward, atol=1e-5, rtol=1e-4)


def test_nemo_node_kl_keeps_the_rest_term_when_the_student_leaves_almost_nothing_outside_the_top_k():
    """The teacher leaves 0.3 of its mass outside its top 2 tokens, the student only 1e-8: the rest term
    0.3 * log(0.3 / 1e-8) dominates the KL. Summing the student's rest as 1 - its top-k mass loses it to fp32
    rounding (that gave 7.68 instead of 4.92 here); the reference is computed in float64 from the probabilities."""
    from raysearch_adapters.models.nemo import _topk_kl

    p = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    q = torch.tensor([0.6, 0.4 - 1e-8, 1e-8 / 3, 1e-8 / 3, 1e-8 / 3], dtype=torch.float64)
    index = torch.tensor([[0, 1]])
    expected = float((p[:2] * (p[:2] / q[:2]).log()).sum() + 0.3 * torch.log(torch.tensor(0.3 / 1e-8, dtype=torch.float64)))
    got = _topk_kl(p[:2].log().float()[None], q.log().float()[None], index)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-4)
    # a teacher with no mass outside its top k: no rest term, whatever the student's rest
    p2 = torch.tensor([0.7, 0.3], dtype=torch.float64)
    got2 = _topk_kl(p2.log().float()[None], q.log().float()[None], index)
    assert float(got2[0]) == pytest.approx(float((p2 * (p2 / q[:2]).log()).sum()), rel=1e-4, abs=1e-6)
