"""Threads by design: a trial worker computes with its CPU share whatever its environment says, and the driver
computes with one thread while the trials run."""

from __future__ import annotations

import pytest
import torch

from raysearch_adapters.config import load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.train.worker import set_threads, threads_while_trials_run, trial_loop_config


def test_a_ray_worker_told_all_cores_by_its_environment_computes_with_its_share(ray_session):
    # What a cluster's container often exports (OMP_NUM_THREADS = every core of the node): Ray keeps a value it
    # finds, and torch starts with it.
    @ray_session.remote(num_cpus=1, runtime_env={"env_vars": {"OMP_NUM_THREADS": "2"}})
    def trial_worker(threads: int):
        import os

        import torch

        started = torch.get_num_threads()
        set_threads(threads)
        a = torch.randn(256, 256)
        (a @ a).sum().item()  # a parallel region after the change
        return started, torch.get_num_threads(), os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]

    assert ray_session.get(trial_worker.remote(1)) == (2, 1, "1", "1")


@pytest.mark.parametrize("overrides,threads", [([], 1), (["resources.cpus_per_worker=0.5"], 1),
                                               (["resources.cpus_per_worker=2.7"], 2),
                                               (["resources.cpus_per_worker=4", "resources.threads_per_worker=3"], 3)])
def test_a_trial_is_given_its_cpu_share_or_the_threads_asked_for(overrides, threads):
    cfg = load_config([], overrides)
    assert trial_loop_config(cfg, {})["threads"] == threads


def test_threads_per_worker_is_a_count():
    with pytest.raises(UserError, match=r"resources\.threads_per_worker.*-1.*>= 0"):
        load_config([], ["resources.threads_per_worker=-1"])


def test_the_driver_computes_with_one_thread_while_trials_run_and_gets_its_threads_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads_while_trials_run():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyboardInterrupt), threads_while_trials_run():
            raise KeyboardInterrupt  # a search stopped with Ctrl-C still evaluates its winner with every thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_trials_of_a_local_ray_instance_run_at_the_drivers_priority(ray_session):
    # The session's instance is started as a search starts its own (start_local_ray). At Ray's default nice 15, any
    # other busy process on the machine takes the cores from the trials almost entirely.
    import os

    @ray_session.remote(num_cpus=1)
    def niceness():
        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray_session.get(niceness.remote()) == os.getpriority(os.PRIO_PROCESS, 0)
