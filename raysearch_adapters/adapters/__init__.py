"""Adapters: model-agnostic bottleneck, parallel and LoRA adapters injected into a frozen backbone, saved on their own."""

from raysearch_adapters.adapters.inject import AdapterHandle, inject_adapters, parse_blocks
from raysearch_adapters.adapters.layers import NotMergeableError
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter

__all__ = ["AdapterHandle", "NotMergeableError", "base_fingerprint", "inject_adapters", "load_adapter", "parse_blocks",
           "save_adapter"]
