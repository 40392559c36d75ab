"""The ``raysearch-adapters`` command: its parser and dispatch. Each subcommand's handler is a module of
this package, imported only when that subcommand runs, so ``--help`` never imports torch or ray."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from raysearch_adapters.commands.args import is_config_item
from raysearch_adapters.errors import UserError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="*", metavar="CONFIG|key=value",
                   help="YAML config files (merged in order) and key=value overrides, e.g. "
                        "conf/demo.yaml search.num_trials=4")


class _AnyOrderParser(argparse.ArgumentParser):
    """A subcommand's parser: its CONFIG|key=value items may come before, between or after its flags
    (``search --resume conf/x.yaml`` parses like ``search conf/x.yaml --resume``)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        # parse_known_intermixed_args parses twice through parse_known_args (flags, then positionals)
        # and refuses a parser with subcommands of its own (config -> show).
        if self._intermixing or any(a.nargs == argparse.PARSER for a in self._actions):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a port number 0-65535 (0: any free port)")
    return port


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a whole number >= 1")
    return count


def _view_limits(p: argparse.ArgumentParser) -> None:
    """``--curves`` and ``--rows``: how much of a big search the dashboard and the report carry."""
    p.add_argument("--curves", type=_count, default=20, metavar="N",
                   help="learning curves of the N best trials (feasible first, then by new-domain dev WER; default: 20)")
    p.add_argument("--rows", type=_count, default=1000, metavar="K",
                   help="trial table rows: the K best trials (default: 1000; trials.parquet has them all)")


def _lazy(module: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``run(args)`` of ``raysearch_adapters.commands.<module>``, imported when the subcommand runs."""
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"raysearch_adapters.commands.{module}").run(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raysearch-adapters",
        description="Search adapter configs (dim, placement, lr, ...) for an ASR model's new domain with "
                    "Ray Tune + Optuna, keeping original-domain WER degradation within kappa.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_AnyOrderParser)
    sub.required = True

    p = sub.add_parser("demo-data", help="build the embedded two-domain demo corpus (offline TTS)")
    p.add_argument("--out", default=None, help="output folder (default: data.demo_dir of the embedded demo config)")
    p.add_argument("--small", action="store_true", help="a tiny corpus for tests (seconds)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the corpus is deterministic per seed)")
    p.add_argument("--jobs", type=int, default=0, help="parallel synthesis processes (0 = all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even if the corpus exists")
    p.set_defaults(func=_lazy("demo_data"))

    p = sub.add_parser("pretrain", help="train a base Conformer-CTC on the original domain")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in pretrain.out_dir")
    p.set_defaults(func=_lazy("pretrain"))

    p = sub.add_parser("evaluate", help="WER/CER of a model (optionally with an adapter) on a manifest")
    p.add_argument("--model", default=None,
                   help="'demo', a checkpoint path, a torchaudio bundle name, or a .nemo file (default: the "
                        "config's model section, e.g. model.name=whisper model.checkpoint=DIR or model.name=nemo "
                        "model.checkpoint=stt_en_conformer_ctc_small; by default the shipped demo model)")
    p.add_argument("--manifest", required=True, nargs="+", action="extend", metavar="MANIFEST",
                   help="manifests to evaluate (.json, .jsonl or .parquet; a Hugging Face dataset or "
                   "hf://ORG/NAME?split=S; lhotse cuts: docs/data.md; several, and repeatable)")
    p.add_argument("--adapter", default=None, help="an adapter file saved by a search")
    p.add_argument("--hypotheses", default=None,
                   help="write per-utterance hypotheses here (Parquet, the schema of a search's hypotheses.parquet; "
                        "with --adapter: the model without it as the base, with it as the winner)")
    _config_args(p)
    p.set_defaults(func=_lazy("evaluate"))

    p = sub.add_parser("search", help="run an adapter search (no arguments: the embedded demo)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    p.set_defaults(func=_lazy("search"))

    p = sub.add_parser("export", help="merge a search's LoRA winner into the base model and check it on the dev sets")
    p.add_argument("results_dir", help="a finished search's results folder (it holds best_adapter.pt)")
    p.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/export)")
    p.add_argument("--ct2-quantization", default="float32", choices=("float32", "int8", "float16"),
                   help="weights of the CTranslate2 model a merged Whisper winner is converted to (default: float32)")
    p.set_defaults(func=_lazy("export"))

    p = sub.add_parser("submit", help="submit a search to a Ray cluster as a Ray job; --status/--logs/--stop JOB_ID")
    p.add_argument("--address", default=None,
                   help="Ray dashboard address, e.g. http://HEAD:8265 (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    _config_args(p)
    p.add_argument("--token-file", default=None,
                   help="the cluster's Ray auth token file (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or "
                        "~/.ray/auth_token for a head on this machine)")
    p.add_argument("--python", default="python",
                   help="the cluster's interpreter that has the project's dependencies (default: python; e.g. "
                        "/home/ray/anaconda3/bin/python in rayproject images)")
    p.add_argument("--runtime-env", default=None, help="a runtime_env YAML to start from (pip, env_vars, ...)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an env var for the job (repeatable)")
    p.add_argument("--working-dir", default=None, help="folder uploaded as the job's working_dir (default: project root)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search of the same name")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 if it failed")
    job = p.add_mutually_exclusive_group()
    job.add_argument("--status", metavar="JOB_ID", default=None, help="print a submitted job's status")
    job.add_argument("--logs", metavar="JOB_ID", default=None, help="print a job's logs (with --follow: stream them)")
    job.add_argument("--stop", metavar="JOB_ID", default=None, help="stop a job")
    p.set_defaults(func=_lazy("submit"))

    p = sub.add_parser("dashboard", help="serve the live results dashboard of a search")
    p.add_argument("results_dir", help="a search's results folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="port (default: 8765; 0: any free port)")
    _view_limits(p)
    p.set_defaults(func=_lazy("dashboard"))

    p = sub.add_parser("report", help="write a self-contained HTML report of a search")
    p.add_argument("results_dir", help="a search's results folder")
    _view_limits(p)
    p.set_defaults(func=_lazy("report"))

    p = sub.add_parser("export-nemo", help="write a NeMo model's winning adapter as a NeMo adapter file "
                                           "(model.load_adapters)")
    p.add_argument("results_dir", help="a search's results folder (model.name=nemo)")
    p.add_argument("--out", default=None, help="the NeMo adapter file to write (default: RESULTS_DIR/nemo_adapter.pt)")
    p.add_argument("--name", default=None, help="the adapter's name in NeMo (default: raysearch)")
    p.set_defaults(func=_lazy("export_nemo"))

    p = sub.add_parser("config", help="show the resolved config")
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", help="print the merged config (defaults <- files <- overrides)")
    _config_args(show)
    show.set_defaults(func=_lazy("config"))
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line (``argv`` without the program name; default: ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "manifest", None):
        # --manifest takes every word up to the next flag: config files and key=value among them
        # are config items (a manifest is never .yaml, nor key=value without a '/' before the '='), in order.
        moved = [m for m in args.manifest if is_config_item(m)]
        args.config = sorted(args.config + moved, key=lambda w: argv.index(w) if w in argv else len(argv))
        args.manifest = [m for m in args.manifest if not is_config_item(m)]
        if not args.manifest:
            parser.error(f"{args.command}: argument --manifest: expected at least one manifest "
                         "(.json, .jsonl or .parquet); config files and key=value are not manifests")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"raysearch-adapters {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path given that cannot be read or written (a file where a folder should be, ...)
        print(f"raysearch-adapters {args.command}: error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a search's trials (a search handles its own: see search.run)
        print(f"raysearch-adapters {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
