"""Typed configuration: frozen dataclasses filled from YAML files and ``key=value`` overrides.

The dataclass defaults name no data and no model checkpoint; the embedded demo's are in the packaged demo
config (``DEMO_CONFIG``, ``conf/demo.yaml`` in the repository), which a command given no config file loads
(``raysearch-adapters search`` with no arguments runs the demo) and a file may build on (``extends: demo``). ``load_config`` merges the
defaults, then each YAML file, then the dotlist overrides (Hydra/NeMo style) through
``OmegaConf.structured``; unknown keys fail with the closest valid key, bad values fail
with the key, the value and what is allowed.
"""

from raysearch_adapters.config.checks import ConfigError
from raysearch_adapters.config.loader import DEMO_CONFIG, RENAMED_KEYS, from_dict, load_config, to_dict, to_yaml
from raysearch_adapters.config.root import Config, MeasuredSet
from raysearch_adapters.config.search import (SAMPLERS, AshaConfig, GridConfig, ParamSpec,
                                              SearchConfig, SpaceConfig)
from raysearch_adapters.config.sections import (ACTIVATIONS, DEFAULT_HOME, HOME_ENV, HOME_FALLBACK, NEMO_HEADS,
                                                AdapterConfig, ConformerConfig, DataConfig, EvalSet, FrontendConfig,
                                                ModelConfig, NemoOptions, PretrainConfig, ResourcesConfig,
                                                ResultsConfig, SpecAugmentConfig, TrainConfig, WhisperOptions)

__all__ = ["ACTIVATIONS", "DEFAULT_HOME", "DEMO_CONFIG", "HOME_ENV", "HOME_FALLBACK", "NEMO_HEADS", "RENAMED_KEYS",
           "SAMPLERS", "AdapterConfig", "AshaConfig", "Config", "ConfigError", "ConformerConfig", "DataConfig",
           "EvalSet", "FrontendConfig", "GridConfig", "MeasuredSet", "ModelConfig", "NemoOptions", "ParamSpec",
           "PretrainConfig", "ResourcesConfig", "ResultsConfig", "SearchConfig", "SpaceConfig", "SpecAugmentConfig",
           "TrainConfig", "WhisperOptions", "from_dict", "load_config", "to_dict", "to_yaml"]
