"""Benchmark the feature cache: seconds of audio per second to build it and to read it back.

    python bench/feature_cache.py [MANIFEST] [--cache-dir DIR] [--n-mels 80]

MANIFEST defaults to the demo corpus's original/dev.json. The cache is built in a fresh
temporary folder (or ``--cache-dir``, which must not already hold this cache, to time a
build on shared storage), then every utterance's features are read back once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_model  # noqa: E402

from raysearch_adapters.config import DEMO_CONFIG, FrontendConfig, load_config
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.data.features import LogMelFrontend


def main() -> None:
    """Build the cache for a manifest, then read it back, and print audio seconds per second for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", nargs="?", default=load_config([DEMO_CONFIG]).data.original_dev,
                        help="manifest to featurize (default: the demo's original/dev.json)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: a fresh temporary one)")
    parser.add_argument("--n-mels", type=int, default=FrontendConfig.n_mels, help="mel channels")
    args = parser.parse_args()
    if not Path(args.manifest).is_file():
        parser.error(f"manifest {args.manifest} not found; build the demo corpus first or pass a manifest")

    config = FrontendConfig(n_mels=args.n_mels)
    frontend = LogMelFrontend(config).eval()
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="feature-cache-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        start = time.perf_counter()
        fs = load_features(args.manifest, frontend, {"frontend": vars(config)}, cache_dir, config.sample_rate)
        build = time.perf_counter() - start
        audio = sum(fs.durations)
        start = time.perf_counter()
        frames = sum(fs.features(i).shape[0] for i in range(len(fs)))
        read = time.perf_counter() - start
        size = fs.path.stat().st_size / 2 ** 20
    print(f"{len(fs)} utterances, {audio:.0f} s of audio, {frames} frames, cache file {size:.1f} MiB")
    print(f"build: {build:.2f} s = {audio / build:.0f} s of audio per second")
    print(f"load (every utterance's features): {read:.3f} s = {audio / read:.0f} s of audio per second")


if __name__ == "__main__":
    main()
