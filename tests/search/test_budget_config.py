"""A budget the search cannot spend fails at load, naming the key and what is allowed, before anything is written."""

from __future__ import annotations

import pytest

from raysearch_adapters.commands.main import main
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.search.tuner import num_trials

BAD = [
    # below one rung: grace_period 1 x eval_every 200
    (["search.budget_steps=150"], r"search\.budget_steps: got 150; must be 0 \(no budget\) or at least one rung: "
                                  r"search\.asha\.grace_period x train\.eval_every = 200 steps"),
    (["search.patience=-1"], r"search\.patience: got -1; must be >= 0"),
    (["search.finalists=0"], r"search\.finalists: got 0; must be >= 1"),
    # the NeMo grid's 24 configs need 24 x 200 + 12 x 200 + ... steps before any trains long
    (["search.sampler=grid", "search.start_points=[]", "search.budget_steps=4000"],
     r"search\.sampler: got 'grid'; the grid's 24 configs cannot be spent in search\.budget_steps=4000: 24 trials "
     r"need \d+ steps .*allowed: a larger budget, a smaller grid"),
    (["search.num_trials=20", "search.budget_steps=4000"],
     r"search\.num_trials: got 20; with search\.budget_steps=4000: 20 trials need \d+ steps.*at most \d+ trial"),
    (["train.lr_schedule=cosine"], r"train\.lr_schedule: got 'cosine'; with search\.budget_steps .*allowed: "
                                   r"wsd, constant, inverse_sqrt"),
    (["train.decay_steps=300"], r"train\.decay_steps: got 300; must be a multiple of train\.eval_every \(200\)"),
    # 4000 steps: a cohort of 4 halved to 2 finalists by step 400 (1,200 steps), 1,400 steps each after it
    (["search.budget_steps=4000", "train.decay_steps=1600"],
     r"train\.decay_steps: got 1600; the cool-down must fit in the finalists' share of the budget \(1400 steps"),
    (["search.space.steps=[400,800]"], r"search\.space\.steps: .*the budget decides how long each trial trains"),
    (["search.budget_steps=0"], r"search\.num_trials: got 0; must be >= 1"),
    (["train.warmup_ratio=0.1"], r"'train\.warmup_ratio' is no longer a key: use train\.warmup_steps"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[0][-1] for b in BAD])
def test_a_budget_that_cannot_be_spent_is_refused_by_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)


def test_the_search_command_refuses_it_before_writing_anything(tmp_path, capsys):
    assert main(["search", f"results.dir={tmp_path}/res", "search.budget_steps=150"]) == 2
    assert "search.budget_steps: got 150" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_the_default_is_a_budget_and_fixed_counts_still_work():
    demo = load_config([])
    assert demo.search.budget_steps == 8000 and num_trials(demo) == 8
    assert num_trials(load_config([], ["search.num_trials=4"])) == 4  # a cohort of 4 within the budget
    assert num_trials(load_config([], ["search.budget_steps=0", "search.num_trials=5",
                                       "train.lr_schedule=cosine"])) == 5
