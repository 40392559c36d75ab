"""Hand a search's winner back to NeMo: its adapter as a NeMo adapter file that plain NeMo loads.

This project's bottleneck adapter (``adapters/modules.py``) has NeMo's ``LinearAdapter`` layout
exactly (``module`` = [LayerNorm,] Linear(D, h, no bias), activation, Linear(h, D, no bias)[,
LayerNorm]; output dropout; residual add), and its ``post`` position is where NeMo's
``ConformerLayer`` calls its linear adapters: on the layer's output, after ``norm_out``. So the
export is NeMo's own recipe (the ASR adapters tutorial) with the winner's weights:

1. restore the base model with its encoder swapped to the adapter-capable class
   (``adapter_mixins.get_registered_adapter(cfg.encoder._target_).adapter_class_path``);
2. ``add_adapter`` a ``LinearAdapterConfig`` of the winner's dim, activation, norm position and
   dropout (NeMo puts it in every layer);
3. load the winner's weights into the layers it adapted; the other layers keep NeMo's
   zero-initialised last layer, which adds exactly 0;
4. check, on a probe input, that NeMo's encoder with the adapter computes what this project's
   adapted model computes;
5. ``save_adapters`` (its config stored as plain dicts, which NeMo's ``load_adapters`` reads under
   torch's ``weights_only`` default; see :func:`_save_adapters`).

A NeMo user then restores the base the same way (step 1), calls ``load_adapters(file)`` and
``set_enabled_adapters(name, enabled=True)``. Adapters at ``mha`` or ``ffn`` (inside a layer's
branches) have no NeMo equivalent (NeMo's ``mha`` location takes attention adapters only), nor does
the ``tanh`` activation (not in NeMo's activation registry), nor LoRA or parallel adapters (a LoRA
winner merges into a ``.nemo`` file instead: ``raysearch-adapters export``): the export says so and
writes nothing.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.adapters.state import FORMAT as ADAPTER_FORMAT, AdapterFileError, load_adapter
from raysearch_adapters.config import AdapterConfig, load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write
from raysearch_adapters.models.checkpoint import read_format_file
from raysearch_adapters.models.nemo import NemoASR, _quiet_nemo, restore_nemo
from raysearch_adapters.results.layout import BEST_ADAPTER_FILE, CONFIG_FILE

# Activations of this project's adapter that NeMo's activation registry builds identically (nn.SiLU, ...).
NEMO_ACTIVATIONS = ("swish", "relu", "gelu")
DEFAULT_NAME = "raysearch"
# Largest difference allowed between NeMo's adapted encoder and this project's on the probe input,
# relative to the output's scale: the two run the same modules, batched alike (float rounding only).
CHECK_TOLERANCE = 1e-4


class NemoExportError(UserError):
    """A winner that cannot be written as a NeMo adapter, naming the key or file and why."""


def check_exportable(cfg: AdapterConfig, where: str) -> None:
    """Refuse an adapter config NeMo's LinearAdapter at a Conformer layer's output cannot express."""
    kind = ADAPTER_TYPES[cfg.type]
    if not kind.nemo_module:
        how = ("`raysearch-adapters export RESULTS_DIR` merges it into the weights and writes a .nemo file NeMo "
               "restores" if kind.mergeable else "load it with this project's adapter file (evaluate --adapter)")
        into = [t.name for t in ADAPTER_TYPES.values() if t.nemo_module]
        raise NemoExportError(f"{where}: adapter.type: got {cfg.type!r}; NeMo's LinearAdapter is a serial bottleneck "
                              f"(this project's {', '.join(repr(n) for n in into)}), a {cfg.type} adapter has no NeMo "
                              f"equivalent; {how}")
    others = [p for p in cfg.positions if p != "post"]
    if others:
        raise NemoExportError(
            f"{where}: adapter.positions: the winner has adapters at {', '.join(others)}; NeMo has no equivalent: "
            "its LinearAdapter sits on a Conformer layer's output only (this project's 'post'), and its 'mha' "
            "location takes attention adapters; search with search.space.position=post to hand a winner to NeMo")
    if cfg.activation not in NEMO_ACTIVATIONS:
        raise NemoExportError(f"{where}: adapter.activation: got {cfg.activation!r}; NeMo's LinearAdapter builds "
                              f"{', '.join(NEMO_ACTIVATIONS)} the same way; search without {cfg.activation!r}")


def _adapter_config(cfg: AdapterConfig, width: int):
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig
    from nemo.core.classes.mixins.adapter_mixin_strategies import ResidualAddAdapterStrategyConfig

    # This project's L2 term is a mean over frames and features, NeMo's a sum: not carried over (inference
    # does not use it either way). Stochastic depth means the same in both.
    return LinearAdapterConfig(in_features=width, dim=cfg.dim, activation=cfg.activation,
                               norm_position=cfg.norm_position, dropout=cfg.dropout,
                               adapter_strategy=ResidualAddAdapterStrategyConfig(
                                   stochastic_depth=cfg.stochastic_depth, l2_lambda=0.0))


def adapter_ready_config(asr):
    """The model's config with its encoder swapped to NeMo's adapter-capable class (step 1 of the module docstring)."""
    from nemo.core.classes.mixins import adapter_mixins
    from omegaconf import open_dict

    cfg = copy.deepcopy(asr.cfg)
    info = adapter_mixins.get_registered_adapter(cfg.encoder._target_)
    if info is not None:
        with open_dict(cfg):
            cfg.encoder._target_ = info.adapter_class_path
    return cfg


def _check_same_outputs(nemo_model, backbone: NemoASR, where: str) -> float:
    """NeMo's adapted encoder vs this project's on a probe input: their largest difference (fails beyond tolerance)."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 160, backbone.asr.encoder._feat_in, generator=g)
    lengths = torch.tensor([160, 120])
    with torch.no_grad():
        ours, our_lengths = backbone.encode_from(*backbone.encode_prefix(feats, lengths, 0), 0)
        theirs, their_lengths = nemo_model.encoder(audio_signal=feats.transpose(1, 2), length=lengths)
    diff = max(float((ours[b, :, :n] - theirs[b, :, :n]).abs().max()) for b, n in enumerate(our_lengths.tolist()))
    scale = float(ours.abs().max())
    if not torch.equal(our_lengths, their_lengths) or diff > CHECK_TOLERANCE * max(scale, 1.0):
        raise NemoExportError(f"{where}: NeMo's encoder with the exported adapter differs from the adapted model here "
                              f"(max difference {diff:.3g} at output scale {scale:.3g}); nothing was written")
    return diff


def _save_adapters(nemo_model, out: Path, name: str) -> None:
    """NeMo's ``save_adapters``, with the file's adapter config as plain dicts.

    NeMo 3.0.0 pickles it as an OmegaConf ``DictConfig``, which its own ``load_adapters`` cannot read
    under torch >= 2.6 (``torch.load`` defaults to ``weights_only=True``; NeMo's code comment says to set
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``). ``load_adapters`` takes the same config as plain dicts, and
    ``torch.load`` reads those with ``weights_only=True``."""
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        nemo_file = Path(tmp) / "adapters.pt"
        with _quiet_nemo():
            nemo_model.save_adapters(str(nemo_file), name=name)
        state = torch.load(nemo_file, map_location="cpu", weights_only=False)  # NeMo wrote it just now
    state["__cfg__"] = OmegaConf.to_container(state["__cfg__"], resolve=True)
    atomic_write(out, lambda tmp: torch.save(state, tmp))


def export_nemo(adapter_file: Path, checkpoint: str, head: str, out: Path, name: str = DEFAULT_NAME) -> dict:
    """Write the adapter in ``adapter_file`` (trained on the NeMo model ``checkpoint``) as NeMo adapter file ``out``.

    Returns what was exported (name, layers, dim, largest probe difference)."""
    adapter_file, out = Path(adapter_file), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = read_format_file(adapter_file, ADAPTER_FORMAT, "adapter file", AdapterFileError)
    if payload.get("base_model") != NemoASR.name:
        raise NemoExportError(f"{adapter_file}: an adapter of a {payload.get('base_model')} model; export-nemo hands "
                              "adapters of NeMo models (model.name=nemo) back to NeMo")
    check_exportable(AdapterConfig(**payload["adapter"]), str(adapter_file))
    if not name.isidentifier():
        raise NemoExportError(f"--name: got {name!r}; a NeMo adapter name is a plain identifier (letters, digits, _)")
    backbone = NemoASR.load(checkpoint, head)
    handle, cfg, _ = load_adapter(adapter_file, backbone)  # refuses another base (fingerprint)
    layers = handle.block_ids
    nemo_model = restore_nemo(checkpoint, override_config=adapter_ready_config(backbone.asr))
    width = int(backbone.asr.encoder.d_model)
    with _quiet_nemo():
        nemo_model.add_adapter(name=name, cfg=_adapter_config(cfg, width))
    state = handle.state_dict()
    for i in layers:
        prefix = f"asr.encoder.layers.{i}."
        nemo_model.encoder.layers[i].adapter_layer[name].load_state_dict(
            {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    nemo_model.set_enabled_adapters(name=name, enabled=True)
    nemo_model.eval()
    diff = _check_same_outputs(nemo_model, backbone, str(adapter_file))
    _save_adapters(nemo_model, out, name)
    return {"name": name, "layers": layers, "dim": cfg.dim, "num_layers": len(backbone.asr.encoder.layers),
            "max_difference": diff, "out": str(out)}


def load_snippet(checkpoint: str, adapter: Path, name: str) -> str:
    """The plain-NeMo code that loads an exported adapter onto its base model."""
    path = Path(checkpoint).expanduser()  # NeMo's restore_from does not expand ~ (conf/nemo_demo.yaml's path)
    if path.is_file():
        checkpoint = str(path)
    restore = (f"ASRModel.restore_from({checkpoint!r}, return_config=True)" if path.is_file()
               else f"ASRModel.from_pretrained({checkpoint!r}, return_config=True)")
    load = ("ASRModel.restore_from" if path.is_file() else "ASRModel.from_pretrained")
    return "\n".join([
        "from nemo.collections.asr.models import ASRModel",
        "from nemo.core.classes.mixins import adapter_mixins",
        "from omegaconf import open_dict",
        f"cfg = {restore}",
        "with open_dict(cfg):",
        "    cfg.encoder._target_ = adapter_mixins.get_registered_adapter(cfg.encoder._target_).adapter_class_path",
        f"model = {load}({str(checkpoint)!r}, override_config_path=cfg)",
        f"model.load_adapters({str(adapter)!r})",
        f"model.set_enabled_adapters(name={name!r}, enabled=True)",
    ])


def export_nemo_results(results_dir: Path, out: Path | None = None, name: str | None = None) -> dict:
    """:func:`export_nemo` of a finished search's winner (``RESULTS_DIR``: a search of ``model.name=nemo``);
    ``out`` defaults to ``RESULTS_DIR/nemo_adapter.pt``. Adds ``load``: the plain-NeMo code that loads it."""
    config_file, adapter_file = results_dir / CONFIG_FILE, results_dir / BEST_ADAPTER_FILE
    if not config_file.is_file():
        raise UserError(f"{results_dir}: holds no search ({CONFIG_FILE} not found)")
    if not adapter_file.is_file():
        raise UserError(f"{results_dir}: holds no winner ({BEST_ADAPTER_FILE} not found: the search found no "
                        "feasible config, or has not finished)")
    cfg = load_config([config_file])
    if cfg.model.name != NemoASR.name:
        raise NemoExportError(f"{config_file}: model.name is {cfg.model.name!r}; export-nemo hands adapters of NeMo "
                              "models (model.name=nemo) back to NeMo")
    out = out if out is not None else results_dir / "nemo_adapter.pt"
    done = export_nemo(adapter_file, cfg.model.checkpoint, cfg.model.nemo.head, out, name or DEFAULT_NAME)
    return {**done, "load": load_snippet(cfg.model.checkpoint, out, done["name"])}
