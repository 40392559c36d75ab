"""The shipped YAML configs: demo.yaml is exactly the defaults; the examples load and fit their models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from raysearch_adapters.config import load_config
from raysearch_adapters.results.placement import parse_blocks
from raysearch_adapters.search.space import check_space

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_demo_yaml_spells_out_the_defaults_and_adds_its_start_point():
    """conf/demo.yaml is the packaged demo config (a link to it), every value the default but its data, its model
    checkpoint and its start point."""
    from raysearch_adapters.config import DEMO_CONFIG

    assert (CONF / "demo.yaml").resolve() == DEMO_CONFIG
    demo, defaults = load_config([CONF / "demo.yaml"]), load_config([])
    assert demo.search.start_points and not defaults.search.start_points
    assert demo.model.checkpoint == "demo" and demo.data.new_train.endswith("/demo/new/train.json")
    assert dataclasses.replace(demo, search=dataclasses.replace(demo.search, start_points=[]),
                               data=dataclasses.replace(demo.data, **{k: getattr(defaults.data, k) for k in (
                                   "demo_dir", "new_train", "new_dev", "new_test", "original_train", "original_dev",
                                   "original_test", "replay_manifest", "distill_manifest")}),
                               model=dataclasses.replace(demo.model, checkpoint="")) == defaults


# Each example's model: its block count, or its (stack, blocks) layout (hf_ctc.yaml's wav2vec2 BASE has 12
# layers; Whisper tiny.en 4 encoder and 4 decoder layers; stt_en_conformer_ctc_small 16 Conformer layers,
# bench/nemo_pretrain.py's model 4).
@pytest.mark.parametrize("name, num_blocks", [("wav2vec2.yaml", 12), ("conformer.yaml", 6), ("hf_ctc.yaml", 12),
                                              ("whisper.yaml", [("encoder", 4), ("decoder", 4)]),
                                              ("nemo.yaml", 16), ("nemo_demo.yaml", 4)])
def test_examples_load_and_their_spaces_fit_the_model(name, num_blocks):
    cfg = load_config([CONF / name])
    check_space(cfg.search.space, num_blocks)
    parse_blocks(cfg.adapter.blocks, num_blocks)
    assert cfg.search.name != "demo"  # an example never writes into the demo's results


def test_whisper_example_keeps_every_trial_on_the_encoder_cache():
    """Decoder placements only: every trial runs from the end of the encoder, whose output is cached once."""
    from raysearch_adapters.search.preflight import shared_measurement_block
    from builders import tiny_whisper

    cfg = load_config([CONF / "whisper.yaml"])
    assert cfg.model.name == "whisper" and cfg.model.checkpoint.endswith("models/whisper-tiny.en")
    model = tiny_whisper(layers=4)
    assert shared_measurement_block(cfg, model) == 4
    positions = set(cfg.search.space.position.choices)
    assert positions <= set(model.adaptable_blocks()[4].positions)


def test_types_yaml_searches_the_type_on_the_demo_with_one_start_point_per_type():
    from builders import tiny_conformer
    from raysearch_adapters.search.space import start_points

    cfg = load_config([CONF / "types.yaml"])
    demo = load_config([CONF / "demo.yaml"])
    assert cfg.search.space.type.choices == ["bottleneck", "lora", "parallel"] and cfg.search.name == "types"
    assert (cfg.search.num_trials, cfg.train.steps, cfg.search.kappa) == (demo.search.num_trials, demo.train.steps,
                                                                          demo.search.kappa)  # the demo's budget
    assert [p["type"] for p in start_points(cfg.search)] == ["bottleneck", "lora", "parallel"]
    check_space(cfg.search.space, len(tiny_conformer(num_layers=6).adaptable_blocks()))


def test_nemo_examples_search_post_adapters_export_nemo_can_hand_back():
    from raysearch_adapters.config import AdapterConfig
    from raysearch_adapters.export.nemo import check_exportable
    from raysearch_adapters.search.space import start_points

    for name in ("nemo.yaml", "nemo_demo.yaml"):
        cfg = load_config([CONF / name])
        assert cfg.model.name == "nemo"
        for position in cfg.search.space.position.choices:
            if name == "nemo.yaml":  # the user's own model: every winner goes back to NeMo
                check_exportable(AdapterConfig(positions=[position]), name)
        assert start_points(cfg.search)[0]["position"] == "post"
    assert load_config([CONF / "nemo.yaml"]).model.checkpoint == "stt_en_conformer_ctc_small"
