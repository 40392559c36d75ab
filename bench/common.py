"""Helpers shared by the bench scripts: the machine's description and running a demo search quietly."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One line naming the machine a figure came from: cores, CPU, GPU, torch, load."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} cores {cpu_model()}, {gpu}, torch {torch.__version__}, load average "
            f"{load:.1f} at the start")


def run_demo_search(overrides: list[str]) -> dict:
    """``raysearch-adapters search`` on the demo config with ``overrides``; returns its summary."""
    from raysearch_adapters.config import DEMO_CONFIG, load_config
    from raysearch_adapters.search.run import run_search

    return run_search(load_config([DEMO_CONFIG], overrides))
