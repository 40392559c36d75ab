"""A trial's result is its best feasible evaluation, and its checkpoint keeps that evaluation's adapter.

Real model and audio: the shipped demo base model adapting to the small demo corpus's new domain
at a learning rate high enough to wreck the original domain step by step, which gives an
evaluation sequence whose second evaluation is feasible and third is not.
"""

from __future__ import annotations

import pytest
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import DEMO_CONFIG, AdapterConfig, TrainConfig, load_config
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.loop import TrainSets, base_dev_errors, train_adapters

CFG = TrainConfig(steps=40, lr=3e-2, eval_every=10, max_batch_seconds=10.0, lr_schedule="cosine", warmup_steps=4)


@pytest.fixture(scope="module")
def demo_sets(small_demo, tmp_path_factory):
    cfg = load_config([DEMO_CONFIG], [f"data.demo_dir={small_demo}", f"data.cache_dir={tmp_path_factory.mktemp('cache')}"])
    model = load_base_model(cfg.model)
    train = load_feature_set(cfg.data, model, cfg.data.new_train, progress=False)
    # New-domain WER measured on the training utterances falls steadily; the original domain's rises.
    dev = {"new": train, "original": load_feature_set(cfg.data, model, cfg.data.original_dev, progress=False)}
    return cfg, train, dev


def _run(cfg, train, dev, limit):
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the adapters' random down-projections: the same run every time
    model = load_base_model(cfg.model)
    handle = inject_adapters(model, AdapterConfig(dim=16, blocks="top:2"))
    base = evaluate(model, dev["original"])["wer"]
    reports = []

    def report(metrics, state):
        reports.append((metrics, handle.state_dict(), {k: v.clone() for k, v in state["best_state_dict"].items()}))

    train_adapters(model, handle, TrainSets(train), dev, CFG, base, report, limit=limit)
    return reports


def test_a_trial_reports_its_best_feasible_evaluation_and_keeps_its_adapter(demo_sets):
    cfg, train, dev = demo_sets
    free = _run(cfg, train, dev, float("inf"))
    evals = [(m["eval_dev_wer_new"], m["eval_degradation"]) for m, _, _ in free]
    (wer1, deg1), (wer2, deg2), (wer3, deg3) = evals[:3]
    limit = (deg2 + deg3) / 2
    # The sequence this test is about (deterministic on CPU; a change of the training code may move it):
    assert deg1 <= limit and deg2 <= limit < deg3 and wer2 < wer1, f"the evaluations moved: {evals}"
    assert all(deg > limit for _, deg in evals[2:]), f"a later evaluation is feasible too: {evals}"

    reports = _run(cfg, train, dev, limit)
    assert [(m["eval_dev_wer_new"], m["eval_degradation"]) for m, _, _ in reports] == evals  # the same run
    last, _, kept = reports[-1]
    second_metrics, second_weights, _ = reports[1]
    assert last["best_step"] == second_metrics["step"] == 20 and last["best_eval_index"] == 2
    assert (last["dev_wer_new"], last["degradation"], last["feasible"]) == (wer2, deg2, True)
    assert last["eval_degradation"] > limit  # the last evaluation itself is infeasible
    assert kept.keys() == second_weights.keys()
    assert all(torch.equal(kept[k], second_weights[k]) for k in kept)  # eval 2's adapter, not the last one
    assert not all(torch.equal(kept[k], reports[-1][1][k]) for k in kept)
    # Without any feasible evaluation the least infeasible one is the result.
    none_feasible = _run(cfg, train, dev, min(d for _, d in evals) - 1.0)
    least = min(range(len(evals)), key=lambda i: (evals[i][1], evals[i][0]))
    assert none_feasible[-1][0]["best_eval_index"] == least + 1 and not none_feasible[-1][0]["feasible"]


LOOP = " ".join(["i always love you"] * 12)  # what a fine-tuned Whisper decoder gave (docs/protecting.md)


class LoopsOnOneUtterance(BackboneView):
    """The real demo model, except that while ``looping`` is set its transcript of the utterance whose features
    have ``length`` frames repeats itself: the failure the search must refuse, on cue."""

    def __init__(self, model, length: int):
        super().__init__(model, None)
        self.length, self.looping = length, False

    def transcribe(self, x, lengths):
        hyps = super().transcribe(x, lengths)
        return [LOOP if self.looping and int(n) == self.length else h for h, n in zip(hyps, lengths)]


def _run_looping_from_eval_3(cfg, train, dev, max_new_loops):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_base_model(cfg.model)
    handle = inject_adapters(model, AdapterConfig(dim=16, blocks="top:2"))
    lengths = [dev["original"].collate([i])[1].item() for i in range(len(dev["original"]))]
    new_lengths = {dev["new"].collate([i])[1].item() for i in range(len(dev["new"]))}
    unique = [n for n in lengths if lengths.count(n) == 1 and n not in new_lengths]
    view = LoopsOnOneUtterance(model, unique[0])
    base = base_dev_errors(view, handle, {"original": dev["original"]}, 120.0, "auto")["original"]
    assert not base.looping.any()
    reports = []

    def report(metrics, state):
        reports.append(metrics)
        view.looping = metrics["eval_index"] >= 2  # from the third evaluation on, that utterance loops

    train_adapters(view, handle, TrainSets(train), dev, CFG, base, report, limit=float("inf"),
                   max_new_loops=max_new_loops)
    return reports


def test_an_evaluation_that_adds_one_looping_utterance_is_infeasible_with_max_new_loops_0(demo_sets):
    cfg, train, dev = demo_sets
    counted = _run_looping_from_eval_3(cfg, train, dev, None)  # loops counted, not held to a limit
    assert [m["eval_new_loops"] for m in counted] == [0, 0, 1, 1]
    assert all(m["eval_feasible"] for m in counted)
    # the sequence this test is about: the new-domain WER falls, so a looping evaluation is the best by WER
    wers = [m["eval_dev_wer_new"] for m in counted]
    assert wers[2] < wers[1] < wers[0] and counted[-1]["best_step"] == 30 and counted[-1]["new_loops"] == 1, wers

    held = _run_looping_from_eval_3(cfg, train, dev, 0)
    assert [m["eval_dev_wer_new"] for m in held] == wers  # the same run
    # no limit on the degradation here: the loop alone makes evaluations 3 and 4 infeasible
    assert [m["eval_feasible"] for m in held] == [True, True, False, False]
    best = held[-1]
    assert (best["best_step"], best["dev_wer_new"], best["new_loops"], best["feasible"]) == (20, wers[1], 0, True)
    # one loop allowed: feasible again
    assert [m["eval_feasible"] for m in _run_looping_from_eval_3(cfg, train, dev, 1)] == [True] * 4
