"""The plain-PyTorch adapter loop: only adapters train, evaluations report both domains, no-op guard fires."""

from __future__ import annotations

import pytest
import torch

from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig, TrainConfig
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.loop import AdapterNoOpError, check_in_forward_path, num_evals, train_adapters

HP = {"lr": 3e-2, "weight_decay": 0.0, "steps": 5, "specaugment": True}
CFG = TrainConfig(steps=5, eval_every=2, max_batch_seconds=2.0, warmup_ratio=0.2)


def _train(model, handle, sets, reports, **kw):
    base_wer = evaluate(model, sets["original"], max_batch_seconds=10.0)["wer"]
    return base_wer, train_adapters(model, handle, sets["train"], {"new": sets["new"], "original": sets["original"]},
                                    HP, CFG, base_wer, lambda m, s: reports.append((m, s)), **kw)


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
    assert lrs[0] <= HP["lr"] and lrs[0] > lrs[1] > lrs[2] > 0
    for m, state in reports:
        assert m["degradation"] == pytest.approx(m["dev_wer_original"] - base_wer)
        assert 0 <= m["dev_wer_new"] and m["train_loss"] > 0 and state["step"] == m["step"]
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
    assert m["degradation"] == pytest.approx(100 * (m["dev_wer_original"] - base_wer) / base_wer)


def test_resume_continues_from_the_reported_state(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    reports = []
    _train(model, handle, feature_sets, reports)
    resumed = []
    _train(model, handle, feature_sets, resumed, resume=reports[1][1])
    assert [m["step"] for m, _ in resumed] == [5] and resumed[0][0]["eval_index"] == 3
    # a run that had already finished reports its final result again (its trial needs one)
    again = []
    _train(model, handle, feature_sets, again, resume=resumed[0][1])
    assert [m for m, _ in again] == [resumed[0][0]]


def test_no_op_guard_fails_an_adapter_forced_out_of_the_forward_path(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    handle.disable()  # still trainable, but never in the forward path: NeMo#14848
    reports = []
    with pytest.raises(AdapterNoOpError, match="not in the forward path"):
        _train(model, handle, feature_sets, reports)
    assert reports == []  # nothing reported: its WERs would have been the base model's


def test_no_op_guard_fails_adapters_that_leave_the_output_unchanged(model, feature_sets):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    inputs, lengths, _ = feature_sets["new"].collate([0, 1])
    # freshly injected adapters are zero-initialised: exactly the base model's output
    with pytest.raises(AdapterNoOpError, match="do not change the model's output"):
        check_in_forward_path(model, handle, inputs, lengths)
