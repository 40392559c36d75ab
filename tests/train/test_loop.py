"""The plain-PyTorch adapter loop: only adapters train, evaluations report both domains, exact resume,
the no-op guard per wrapper, replay and distillation in the loss, each trial's best feasible evaluation."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig, TrainConfig
from raysearch_adapters.data.batching import SecondsSampler
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.loop import (AdapterNoOpError, BatchPlan, NonFiniteError, TrainSets,
                                           check_in_forward_path, num_evals, step_loss, train_adapters)
from raysearch_adapters.train.prefix import load_teacher_set

CFG = TrainConfig(steps=5, lr=3e-2, eval_every=2, max_batch_seconds=2.0, warmup_steps=1, lr_schedule="cosine",
                  specaugment=True)


def _train(model, handle, sets, reports, cfg=CFG, **kw):
    base_wer = evaluate(model, sets["original"], max_batch_seconds=10.0)["wer"]
    return base_wer, train_adapters(model, handle, TrainSets(sets["train"]),
                                    {"new": sets["new"], "original": sets["original"]}, cfg, base_wer,
                                    lambda m, s: reports.append((m, _frozen(s))), **kw)


def _frozen(state: dict) -> dict:
    """A deep copy of a reported train state, as the worker's torch.save makes it (later steps mutate the live one)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_only_adapters_train_and_every_evaluation_is_reported(model, feature_sets):
    base = {k: v.clone() for k, v in model.state_dict().items()}
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    initial = handle.state_dict()
    reports = []
    base_wer, last = _train(model, handle, feature_sets, reports)
    # steps 2, 4 and the final step 5: num_evals rounds up
    assert [m["step"] for m, _ in reports] == [2, 4, 5] and num_evals(5, 2) == 3
    assert [m["eval_index"] for m, _ in reports] == [1, 2, 3]
    assert [m["final"] for m, _ in reports] == [False, False, True] and last == reports[-1][0]
    lrs = [m["lr"] for m, _ in reports]  # one warm-up step, then cosine decay
    assert lrs[0] <= CFG.lr and lrs[0] > lrs[1] > lrs[2] > 0
    for m, state in reports:
        assert m["eval_degradation"] == pytest.approx(m["eval_dev_wer_original"] - base_wer)
        assert 0 <= m["eval_dev_wer_new"] and m["train_loss"] > 0 and state["step"] == m["step"]
        assert m["distill_loss"] is None and m["supervised_loss"] == pytest.approx(m["train_loss"])
    after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "adapter" not in k
             and ".residual" not in k}
    assert all(torch.equal(base[k], after[k]) for k in base), "a base weight changed"
    trained = handle.state_dict()
    assert all(not torch.equal(initial[k], trained[k]) for k in initial if initial[k].is_floating_point())


def test_relative_degradation_is_percent_of_base(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    reports = []
    base_wer, _ = _train(model, handle, feature_sets, reports, kappa_mode="relative")
    m = reports[-1][0]
    assert m["eval_degradation"] == pytest.approx(100 * (m["eval_dev_wer_original"] - base_wer) / base_wer)


def test_an_interrupted_and_resumed_trial_ends_like_an_uninterrupted_one(feature_sets):
    from builders import tiny_conformer

    def fresh(state_dict=None):
        model = tiny_conformer(seed=0, num_layers=2)
        return model, inject_adapters(model, AdapterConfig(dim=4, blocks="top:1", dropout=0.1), state_dict)

    # SpecAugment and adapter dropout draw random numbers: a resume must continue their streams too.
    whole_model, whole = fresh()
    uninterrupted = []
    _train(whole_model, whole, feature_sets, uninterrupted)
    cut_model, cut = fresh()
    first_part = []
    weights_at = {}
    base_wer = evaluate(cut_model, feature_sets["original"], max_batch_seconds=10.0)["wer"]

    def stop_after_second_evaluation(metrics, state):
        first_part.append(metrics)
        weights_at[metrics["step"]] = (cut.state_dict(), _frozen(state))
        if metrics["eval_index"] == 2:
            raise KeyboardInterrupt  # the trial's process is stopped here

    with pytest.raises(KeyboardInterrupt):
        train_adapters(cut_model, cut, TrainSets(feature_sets["train"]),
                       {"new": feature_sets["new"], "original": feature_sets["original"]}, CFG, base_wer,
                       stop_after_second_evaluation)
    adapter_weights, state = weights_at[4]
    resumed_model, resumed = fresh(adapter_weights)  # a new process loads the checkpoint
    rest = []
    train_adapters(resumed_model, resumed, TrainSets(feature_sets["train"]),
                   {"new": feature_sets["new"], "original": feature_sets["original"]}, CFG, base_wer,
                   lambda m, s: rest.append(m), resume=state)
    assert [m["step"] for m in rest] == [5]
    final, expected = resumed.state_dict(), whole.state_dict()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    for key in ("eval_dev_wer_new", "eval_dev_wer_original", "dev_wer_new", "best_step", "train_loss"):
        assert rest[0][key] == uninterrupted[-1][0][key], key
    # a run that had already finished reports its final result again (its trial needs one)
    again = []
    train_adapters(resumed_model, resumed, TrainSets(feature_sets["train"]),
                   {"new": feature_sets["new"], "original": feature_sets["original"]}, CFG, base_wer,
                   lambda m, s: again.append(m), resume=_frozen({**state, "step": 5, "metrics": rest[0]}))
    assert again == [rest[0]]


def test_no_op_guard_fails_an_adapter_forced_out_of_the_forward_path(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    handle.disable()  # still trainable, but never in the forward path: NeMo#14848
    reports = []
    with pytest.raises(AdapterNoOpError, match="receive no gradient: they are not in the forward path"):
        _train(model, handle, feature_sets, reports)
    assert reports == []  # nothing reported: its WERs would have been the base model's


def test_no_op_guard_names_the_one_bypassed_wrapper_among_working_ones(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="all", positions=["mha", "ffn"]))
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.1)  # trained: every adapter changes its module's output
    inputs, lengths, _ = feature_sets["new"].collate([0, 1])
    check_in_forward_path(model, handle, inputs, lengths)
    handle.wrappers[1].enabled = False  # the model's output still changes, through the other three
    with pytest.raises(AdapterNoOpError, match=rf"at {handle.wrappers[1].name} never run in the forward pass"):
        check_in_forward_path(model, handle, inputs, lengths)


def test_no_op_guard_fails_adapters_that_leave_the_output_unchanged(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    inputs, lengths, _ = feature_sets["new"].collate([0, 1])
    # freshly injected adapters are zero-initialised: exactly the base model's output
    with pytest.raises(AdapterNoOpError, match="do not change their module's output"):
        check_in_forward_path(model, handle, inputs, lengths)


def test_a_nan_in_the_features_stops_the_trial_at_its_first_step_naming_the_term(model, feature_sets, monkeypatch):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    train, collate = feature_sets["train"], feature_sets["train"].collate

    def with_nan(indices):
        x, lengths, texts = collate(indices)
        x[0, : lengths[0]] = float("nan")  # every frame: SpecAugment's masks cannot hide it
        return x, lengths, texts

    monkeypatch.setattr(train, "collate", with_nan)
    reports = []
    with pytest.raises(NonFiniteError, match=r"^step 1: the training loss is nan \(non-finite: supervised = nan; "
                                             r"learning rate .*\); the trial stops instead of training on it. Likely: "
                                             r"a learning rate too high .* or bad audio"):
        _train(model, handle, feature_sets, reports)
    assert reports == []


def test_an_absurd_learning_rate_stops_the_trial_at_the_step_its_loss_is_not_finite(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    reports = []
    # one evaluation, at the end: the loss diverges before it
    cfg = dataclasses.replace(CFG, lr=1e30, warmup_steps=0, grad_clip=0.0, specaugment=False, eval_every=5)
    with pytest.raises(NonFiniteError, match=r"^step [2-5]: the training loss is nan \(non-finite: supervised = nan; "
                                             r"learning rate \d\.\d+e\+(29|30)\)"):
        _train(model, handle, feature_sets, reports, cfg=cfg)
    assert reports == []


def test_adapters_with_nan_outputs_are_named_as_such_not_as_out_of_the_forward_path(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    with torch.no_grad():
        for p in handle.parameters():
            p.fill_(float("nan"))  # weights a diverged trial would have
    inputs, lengths, _ = feature_sets["new"].collate([0, 1])
    with pytest.raises(NonFiniteError, match=rf"the adapters at {handle.wrappers[0].name} output NaN/inf on a dev "
                                             r"batch; .* Likely: a learning rate too high"):
        check_in_forward_path(model, handle, inputs, lengths)


@pytest.mark.parametrize("replay", [0.25, 0.5, 0.75])
def test_a_batch_holds_the_requested_share_of_replay_audio(feature_sets, replay):
    sets = TrainSets(feature_sets["train"], replay=feature_sets["original"])
    plan = BatchPlan(sets, TrainConfig(max_batch_seconds=8.0, seed=3), replay, False, 0, 1)
    longest = max(sets.replay.durations)
    for _ in range(20):
        new, from_replay, distill = plan.next()
        new_s = sum(sets.new.durations[i] for i in new)
        replay_s = sum(sets.replay.durations[i] for i in from_replay)
        assert not distill and new_s <= 8.0 * (1 - replay)
        assert abs(replay_s - replay * (new_s + replay_s)) <= longest  # within one utterance
        if new_s * replay / (1 - replay) >= longest:
            assert from_replay


def test_seconds_sampler_goes_through_every_utterance_once_per_epoch():
    sampler = SecondsSampler([1.0, 2.0, 1.5, 0.5], seed=7)
    first, second = sampler.take(5.0), sampler.take(5.0)  # 5 s is the whole set: one epoch each
    assert sorted(first) == sorted(second) == [0, 1, 2, 3] and first != second  # reshuffled per epoch
    assert sampler.take(0.2) == []  # under half of any utterance: nothing
    again = SecondsSampler([1.0, 2.0, 1.5, 0.5], seed=7)
    assert again.take(5.0) == first  # deterministic per seed (a resumed trial replays it)


def test_replay_utterances_enter_the_supervised_loss(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    view = BackboneView(model)
    sets = TrainSets(feature_sets["train"], replay=feature_sets["original"])
    batch = ([0, 1], [2, 3], [])
    loss, terms = step_loss(view, handle, sets, batch, 0.0, torch.device("cpu"), "fp32")
    with torch.no_grad():
        per_utt = torch.cat([view.losses(*sets.new.collate([0, 1])[:2], sets.new.collate([0, 1])[2]),
                             view.losses(*sets.replay.collate([2, 3])[:2], sets.replay.collate([2, 3])[2])])
    assert terms["supervised"] == pytest.approx(float(per_utt.mean()), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(terms["supervised"], rel=1e-6)


def test_distillation_is_exactly_zero_at_initialisation_and_positive_after_a_step(model, feature_sets, tmp_path):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    teacher = load_teacher_set(feature_sets["original"], model, tmp_path / "cache")
    sets = TrainSets(feature_sets["train"], distill=feature_sets["original"], teacher=teacher)
    view = BackboneView(model)
    optimizer = torch.optim.AdamW(list(handle.parameters()), lr=3e-2)
    handle.train()
    with torch.no_grad():
        for i in range(len(teacher)):  # one utterance alone: the teacher's own computation, bit for bit
            x, lengths, _ = sets.distill.collate([i])
            t, t_lengths, _ = teacher.collate([i])
            assert float(view.distill(x, lengths, t, t_lengths)) == 0.0
    # in a step the distillation rows share one padded batch with the labelled ones: float rounding only
    _, terms = step_loss(view, handle, sets, ([0], [], [0, 1, 2]), 1.0, torch.device("cpu"), "fp32")
    assert abs(terms["distill"]) < 1e-6
    loss, _ = step_loss(view, handle, sets, ([0, 1, 2], [], []), 1.0, torch.device("cpu"), "fp32")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    loss, terms = step_loss(view, handle, sets, ([0], [], [0, 1]), 5.0, torch.device("cpu"), "fp32")
    assert terms["distill"] > 1e-6
    assert float(loss.detach()) == pytest.approx(terms["supervised"] + 5.0 * terms["distill"], rel=1e-5)


def test_teacher_cache_is_built_once_and_keyed_by_the_base_weights(model, feature_sets, tmp_path):
    calls = []
    model.encoder.subsampling.register_forward_hook(lambda *_: calls.append(1))
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    first = load_teacher_set(feature_sets["original"], model, tmp_path / "cache")
    assert len(calls) == len(first) == len(feature_sets["original"])
    assert first.texts == feature_sets["original"].texts and first.feature_dim == model.tokenizer.vocab_size + 1
    calls.clear()
    second = load_teacher_set(feature_sets["original"], model, tmp_path / "cache")  # a second trial
    assert calls == [] and second.path == first.path
    with torch.no_grad():  # a trained adapter does not change the teacher: it is the base model
        for p in handle.parameters():
            p.add_(0.5)
    assert load_teacher_set(feature_sets["original"], model, tmp_path / "cache").path == first.path and calls == []
    with torch.no_grad():
        model.head.weight.mul_(1.01)
    other = load_teacher_set(feature_sets["original"], model, tmp_path / "cache")
    assert other.path != first.path and len(calls) == len(feature_sets["original"])


def test_patience_ends_a_trial_that_stopped_improving(model, feature_sets):
    """A learning rate too small to change any transcript: the best evaluation stays the first one, so with
    patience 2 the trial ends at its third evaluation, that report final, far before its 20 steps."""
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    cfg = dataclasses.replace(CFG, lr=1e-9, steps=20, specaugment=False)
    reports = []
    _, last = _train(model, handle, feature_sets, reports, cfg=cfg, patience=2)
    assert [m["step"] for m, _ in reports] == [2, 4, 6]
    assert [m["final"] for m, _ in reports] == [False, False, True] and last["final"]
    assert [m["best_eval_index"] for m, _ in reports] == [1, 1, 1]
    # Without patience the same trial trains all its steps.
    handle.remove()
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    reports = []
    _train(model, handle, feature_sets, reports, cfg=cfg)
    assert reports[-1][0]["step"] == 20 and [m["final"] for m, _ in reports].count(True) == 1


def test_a_horizon_free_schedule_gives_the_same_rates_whatever_the_trial_length(feature_sets):
    """With train.lr_schedule=constant the rate at a step does not depend on the trial's planned length, so a
    trial continued past its first plan trains as if planned that long; with cosine it does."""
    from builders import tiny_conformer

    def lrs(steps: int, schedule: str, warmup: int) -> list:
        m = tiny_conformer(seed=0, num_layers=2)
        handle = inject_adapters(m, AdapterConfig(dim=4, blocks="top:1"))
        cfg = TrainConfig(steps=steps, lr=CFG.lr, eval_every=2, max_batch_seconds=2.0, warmup_steps=warmup,
                          lr_schedule=schedule)
        reports = []
        train_adapters(m, handle, TrainSets(feature_sets["train"]),
                       {"new": feature_sets["new"], "original": feature_sets["original"]},
                       cfg, 0.0, lambda r, s: reports.append(r))
        return [(r["step"], r["lr"]) for r in reports]

    short, long = lrs(4, "constant", 3), lrs(8, "constant", 3)
    assert long[:len(short)] == short
    # a report's rate is its last step's: step index 1 of a 3-step warm-up (2/3 of the peak), then the peak
    assert short == [(2, pytest.approx(CFG.lr * 2 / 3)), (4, pytest.approx(CFG.lr))]
    assert lrs(8, "cosine", 1)[:2] != lrs(4, "cosine", 1)
