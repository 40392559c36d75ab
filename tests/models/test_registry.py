"""The backbone registry: one registration per backbone, the config's model.name checked against it, the class
each registration names, and what `evaluate --model VALUE` loads."""

from __future__ import annotations

import re

import pytest

from raysearch_adapters.backbones import BACKBONES, BackboneEntry, names, register
from raysearch_adapters.config import DEMO_CONFIG, ConfigError, ModelConfig, load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.registry import backbone_class, model_section_for


def test_each_registration_names_its_backbone_class():
    assert names() == ("conformer_ctc", "wav2vec2", "hf_ctc", "whisper", "nemo")
    for name in names():
        cls = backbone_class(name)
        assert issubclass(cls, Backbone) and cls.name == name
        assert cls.from_model_config is not Backbone.from_model_config, name


def test_model_name_is_checked_against_the_registry_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"^model\.name: got 'whisperx'; allowed: conformer_ctc, wav2vec2, hf_ctc, "
                                          r"whisper, nemo$"):
        load_config([], ["model.name=whisperx"])
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: got 'demo'; model\.name=nemo takes a \.nemo file"):
        load_config([], ["model.name=nemo", "model.checkpoint=demo"])
    with pytest.raises(UserError, match="model.name: got 'x'"):
        backbone_class("x")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        register(BackboneEntry("whisper", "raysearch_adapters.models.whisper:Whisper", "a folder"))
    assert len(BACKBONES) == 5


@pytest.mark.parametrize("value, config, expected", [
    ("WAV2VEC2_ASR_BASE_960H", {}, ("wav2vec2", "checkpoint", "WAV2VEC2_ASR_BASE_960H")),
    ("hubert_asr_large", {}, ("wav2vec2", "checkpoint", "hubert_asr_large")),
    ("models/stt.nemo", {}, ("nemo", "checkpoint", "models/stt.nemo")),
    ("pretrain/model.pt", {}, ("conformer_ctc", "checkpoint", "pretrain/model.pt")),
    ("stt_en_conformer_ctc_small", {"name": "nemo", "checkpoint": "x.nemo"},
     ("nemo", "checkpoint", "stt_en_conformer_ctc_small")),
    ("openai/whisper-tiny.en", {"name": "whisper", "checkpoint": "other"}, ("whisper", "checkpoint", "openai/whisper-tiny.en")),
])
def test_evaluate_model_names_a_backbone(value, config, expected):
    section = model_section_for(value, ModelConfig(**config))
    name, field, source = expected
    assert section.name == name and getattr(section, field) == source


def test_each_adapter_type_is_registered_once_with_a_builder_and_its_hyperparameters():
    from raysearch_adapters.adapter_types import ADAPTER_TYPES, AdapterType, names as type_names, register as add_type
    from raysearch_adapters.hparams import HPARAMS, TYPE_PARAMS

    assert type_names() == ("bottleneck", "lora", "parallel") == tuple(TYPE_PARAMS)
    assert {k.placement for k in ADAPTER_TYPES.values()} == {"positions", "parallel", "linears"}
    assert [k.name for k in ADAPTER_TYPES.values() if k.mergeable] == ["lora"]
    assert next(h for h in HPARAMS if h.name == "type").rule("parallel") is None
    assert "allowed: bottleneck, lora, parallel" in next(h for h in HPARAMS if h.name == "type").rule("adapterx")
    with pytest.raises(ValueError, match="registered twice"):
        add_type(AdapterType("lora", "linears", "raysearch_adapters.adapters.inject:build_lora", mergeable=True))
    with pytest.raises(ValueError, match="placement 'blocks'; allowed: positions, parallel, linears"):
        add_type(AdapterType("new", "blocks", "raysearch_adapters.adapters.inject:build_lora", mergeable=True))
    assert len(ADAPTER_TYPES) == 3


@pytest.mark.parametrize("adapter_type, layer", [("bottleneck", "AdapterWrapper"), ("parallel", "ParallelWrapper"),
                                                 ("lora", "LoraWrapper")])
def test_injection_builds_each_type_through_its_registered_builder(adapter_type, layer):
    from builders import tiny_conformer

    from raysearch_adapters.adapter_types import ADAPTER_TYPES
    from raysearch_adapters.adapters.inject import inject_adapters
    from raysearch_adapters.config import AdapterConfig

    entry = ADAPTER_TYPES[adapter_type]
    model = tiny_conformer()
    handle = inject_adapters(model, AdapterConfig(type=adapter_type, dim=4, rank=2, blocks="top:1"))
    assert {type(w).__name__ for w in handle.wrappers} == {layer}
    assert entry.builder().__name__ == f"build_{adapter_type}"
    assert handle.block_ids == [len(model.adaptable_blocks()) - 1]


def test_a_field_an_adapter_type_has_no_use_for_must_be_zero():
    with pytest.raises(ConfigError, match=r"^adapter\.stochastic_depth: got 0\.1; has no effect on type lora \(lora "
                                          r"has no branch output to skip or penalise\): set 0$"):
        load_config([], ["adapter.type=lora", "adapter.stochastic_depth=0.1"])


@pytest.mark.parametrize("old, new", [
    ("model.bundle=WAV2VEC2_ASR_BASE_960H", r"model\.checkpoint \(the torchaudio bundle's name"),
    ("model.language=de", r"model\.whisper\.language$"),
    ("model.max_new_tokens=64", r"model\.whisper\.max_new_tokens$"),
    ("model.nemo_head=ctc", r"model\.nemo\.head$"),
])
def test_a_backbone_option_moved_to_its_section_fails_naming_the_new_key(old, new, tmp_path):
    key = old.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^override '{old}': '{key}' is no longer a key: use {new}"):
        load_config([], [old])
    conf = tmp_path / "old.yaml"
    conf.write_text(f"model:\n  {key.split('.')[1]}: {old.split('=')[1]}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(conf))}: '{key}' is no longer a key: use {new}"):
        load_config([conf])


def test_each_backbone_reads_its_own_section():
    cfg = load_config([], ["model.name=whisper", "model.checkpoint=openai/whisper-tiny.en", "model.whisper.language=de",
                           "model.whisper.max_new_tokens=64", "model.nemo.head=ctc"])
    assert (cfg.model.whisper.language, cfg.model.whisper.max_new_tokens, cfg.model.nemo.head) == ("de", 64, "ctc")
    assert backbone_class("whisper").evaluate_args(cfg.model) == (
        "model.name=whisper model.checkpoint=openai/whisper-tiny.en model.whisper.language=de "
        "model.whisper.max_new_tokens=64")
    with pytest.raises(ConfigError, match=r"^model\.whisper\.max_new_tokens: got 0; must be >= 1 and <= 440$"):
        load_config([], ["model.whisper.max_new_tokens=0"])
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: got 'demo'; model\.name=wav2vec2 takes a "
                                          r"torchaudio\.pipelines ASR bundle name"):
        load_config([DEMO_CONFIG], ["model.name=wav2vec2"])
