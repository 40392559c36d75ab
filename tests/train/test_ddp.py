"""Two ranks (gloo, CPU) train one trial in lockstep: same adapter weights, WER of the whole dev set."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from builders import tiny_conformer
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig, TrainConfig
from raysearch_adapters.data.cache import FeatureSet
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.loop import TrainSets, train_adapters

CFG = TrainConfig(steps=3, lr=3e-2, eval_every=3, max_batch_seconds=1.5)


def _rank(rank: int, world: int, port: int, paths: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    sets = {k: FeatureSet(p) for k, p in paths.items()}
    model = tiny_conformer(seed=0, num_layers=2)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"))
    torch.manual_seed(rank)  # different adapter init per rank: only the gradient averaging keeps them equal
    for p in handle.parameters():
        p.data.normal_(0, 0.1)
    for p in handle.parameters():  # start equal, as DDP does
        dist.broadcast(p.data, 0)
    reports = []
    train_adapters(model, handle, TrainSets(sets["train"]), {"new": sets["new"], "original": sets["original"]}, CFG,
                   50.0, lambda m, s: reports.append(m), rank=rank, world_size=world, all_reduce=dist.all_reduce)
    torch.save({"weights": handle.state_dict(), "metrics": reports[-1]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_agree_and_report_the_whole_dev_set(feature_sets, tmp_path):
    paths = {k: str(v.path) for k, v in feature_sets.items()}
    port = 29500 + os.getpid() % 1000
    mp.spawn(_rank, args=(2, port, paths, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    r0["metrics"].pop("time_s"), r1["metrics"].pop("time_s")
    # train loss and WERs are reduced over both ranks; each set's values (nested) too
    flat = [{k: v for k, v in r["metrics"].items() if k not in ("sets", "eval_sets")} for r in (r0, r1)]
    assert flat[0] == pytest.approx(flat[1])
    for key in ("sets", "eval_sets"):
        for name, entry in r0["metrics"][key].items():
            assert entry == pytest.approx(r1["metrics"][key][name])
    # the reduced WER is the WER of the whole dev set, as one process computes it
    model = tiny_conformer(seed=0, num_layers=2)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="top:1"), state_dict=r0["weights"])
    handle.eval()
    assert r0["metrics"]["dev_wer_new"] == pytest.approx(evaluate(model, feature_sets["new"])["wer"])
    assert r0["metrics"]["dev_wer_original"] == pytest.approx(evaluate(model, feature_sets["original"])["wer"])
