"""Reading a config: defaults, then YAML files, then ``key=value`` overrides, checked; and writing one."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from raysearch_adapters.config.checks import ConfigError
from raysearch_adapters.config.root import Config
from raysearch_adapters.config.search import ParamSpec, SpaceConfig
from raysearch_adapters.config.sections import EvalSet
from raysearch_adapters.errors import first_line


# --------------------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            k = f"{prefix}{f.name}"
            keys.append(k)
            keys.extend(_all_keys(getattr(node, f.name), k + "."))
    return keys


# Keys that were replaced: a config using one fails with the key to use instead.
RENAMED_KEYS = {"train.warmup_ratio": "train.warmup_steps (a number of steps; the decay after it is "
                                      "train.lr_schedule)",
                "model.bundle": "model.checkpoint (the torchaudio bundle's name, with model.name=wav2vec2)",
                "model.language": "model.whisper.language",
                "model.max_new_tokens": "model.whisper.max_new_tokens",
                "model.nemo_head": "model.nemo.head"}


def _unknown_key_error(full_key: str, where: str) -> ConfigError:
    if full_key in RENAMED_KEYS:
        return ConfigError(f"{where}'{full_key}' is no longer a key: use {RENAMED_KEYS[full_key]}")
    valid = _all_keys(Config())
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    siblings = [k for k in valid if "." in k and k.rsplit(".", 1)[0] == parent] if parent else [
        k for k in valid if "." not in k]
    leaf = full_key.rsplit(".", 1)[-1]
    close = [(parent + "." if parent else "") + c for c in
             difflib.get_close_matches(leaf, [s.rsplit(".", 1)[-1] for s in siblings], n=1, cutoff=0.5)]
    if not close:  # the name, or a near one, in another section (the first such key); never a parent
        elsewhere: dict = {}
        for k in valid:
            if not full_key.startswith(k + "."):
                elsewhere.setdefault(k.rsplit(".", 1)[-1], k)
        close = [elsewhere[c] for c in difflib.get_close_matches(leaf, list(elsewhere), n=1, cutoff=0.75)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    allowed = ", ".join(s.rsplit(".", 1)[-1] for s in siblings)
    return ConfigError(f"{where}unknown key '{full_key}'{hint} (allowed under "
                       f"'{parent or '<top>'}': {allowed})")


def _omegaconf_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", "") or ""
    return ConfigError(f"{where}{key + ': ' if key else ''}{first_line(e)}")


def _merge(base: Any, other: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        if getattr(e, "object_type", None) is EvalSet:  # a key inside an entry of data.targets / data.protected
            allowed = ", ".join(f.name for f in dataclasses.fields(EvalSet))
            raise ConfigError(f"{where}data.targets / data.protected: an entry has the unknown key '{e.key}' "
                              f"(allowed in each entry: {allowed})") from None
        raise _unknown_key_error(str(e.full_key), where) from None
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, where) from None


def _writable_schema() -> Any:
    """The defaults as an OmegaConf schema that files and overrides may fill.

    OmegaConf 2.3 marks every node of a frozen dataclass read-only; the frozen dataclass built at
    the end of loading is what keeps a loaded config immutable, so the flags are cleared here."""
    cfg = OmegaConf.structured(Config)

    def clear(node: Any) -> None:
        OmegaConf.set_readonly(node, None)
        if node._is_none() or node._is_missing():
            return
        for key in (range(len(node)) if OmegaConf.is_list(node) else list(node.keys())):
            child = node._get_node(key)
            if OmegaConf.is_config(child):
                clear(child)

    clear(cfg)
    return cfg


_DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.\w+)*")
_EMPTY_ENTRY = dataclasses.asdict(ParamSpec())


def _whole_entry(node: Any) -> dict:
    """A space entry given whole, with every field: a mapping as given, a list as choices, else a value."""
    if isinstance(node, dict):
        return {**_EMPTY_ENTRY, **node}
    if isinstance(node, list):
        return {**_EMPTY_ENTRY, "choices": node}
    return {**_EMPTY_ENTRY, "value": node}


def _replace_whole_entries(node: Any, depth: int) -> Any:
    """``node`` (a YAML file, or an override whose key has ``depth`` parts) with each search.space entry
    it gives whole spelled out in full, so that merging replaces the default entry instead of mixing
    with it (``{low: 4, high: 64}`` over the default ``choices`` would give both)."""
    if depth > 3:  # search.space.NAME.FIELD=...: one field of the entry, merged into it
        return node
    tree = OmegaConf.to_container(node)
    space = tree.get("search", {}).get("space") if isinstance(tree, dict) and isinstance(
        tree.get("search"), dict) else None
    if not isinstance(space, dict):
        return node
    names = {f.name for f in dataclasses.fields(SpaceConfig)}  # other keys fail the merge, named
    space.update({k: _whole_entry(v) for k, v in space.items() if k in names})
    return OmegaConf.create(tree)


# The embedded demo's config: what a command given no config file loads (raysearch_adapters.commands.args).
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "demo.yaml"


EXTENDS_FORMS = "'demo' (the packaged demo config) or the path of a YAML config file, relative to this one"


MAX_CONFIG_VALUES = 100_000  # a config file may expand to at most this many YAML values, aliases included


def _check_expansion(path: Path) -> None:
    """Refuse a file whose YAML aliases (``*name`` of an ``&name`` anchor) expand it beyond MAX_CONFIG_VALUES values:
    the loader copies an aliased node at each use, so ten levels of ten aliases make 10^10 (a "billion laughs")."""
    with open(path, encoding="utf-8") as f:
        root = yaml.compose(f, Loader=yaml.SafeLoader)
    sizes: dict = {}

    def size(node) -> int:  # the values this node expands to, each shared node counted once per use
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a node that contains itself (a recursive alias) expands without end
            children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else
                        node.value if isinstance(node, yaml.SequenceNode) else [])
            sizes[id(node)] = 1 + sum(size(c) for c in children)
        elif sizes[id(node)] == 0:
            raise ConfigError(f"config file {path}: line {node.start_mark.line + 1}: a YAML alias refers to a node "
                              "that contains it (it would expand without end); allowed: aliases of other nodes")
        return sizes[id(node)]

    if root is not None and size(root) > MAX_CONFIG_VALUES:
        raise ConfigError(f"config file {path}: its YAML aliases expand it to {size(root):,} values; allowed: at "
                          f"most {MAX_CONFIG_VALUES:,} (a config needs a few hundred; write the values out, or use "
                          "fewer nested aliases)")


def _read_file(path: Path, chain: tuple = ()) -> list:
    """``[(path, node), ...]`` to merge in order: the files ``path`` extends (its top-level ``extends:`` key,
    followed recursively), then ``path`` itself without that key."""
    if not path.is_file():
        raise ConfigError(f"config file {path}: {'not a file' if path.exists() else 'not found'}")
    try:
        _check_expansion(path)
        loaded = OmegaConf.load(path)
    except ConfigError:
        raise
    except Exception as e:  # yaml.YAMLError carries the line
        raise ConfigError(f"config file {path}: not valid YAML: {e}".replace("\n", " ")) from None
    if not OmegaConf.is_dict(loaded):
        raise ConfigError(f"config file {path}: the top level is a list; expected sections such as "
                          "search: and train:")
    if "extends" not in loaded:
        return [(path, loaded)]
    base = loaded.pop("extends")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: extends: got {base!r}; allowed: {EXTENDS_FORMS}")
    base_path = DEMO_CONFIG if base == "demo" else (path.parent / base).expanduser()
    here = path.resolve()
    if base_path.resolve() in (*chain, here):
        raise ConfigError(f"config file {path}: extends: {base!r} is a file this one already extends (a cycle: "
                          f"{' -> '.join(str(p) for p in (*chain, here, base_path.resolve()))})")
    if not base_path.is_file():
        raise ConfigError(f"config file {path}: extends: {base!r}: {base_path} not found; allowed: {EXTENDS_FORMS}")
    return _read_file(base_path, (*chain, here)) + [(path, loaded)]


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Defaults ← each YAML in ``paths`` (each after the files it ``extends``) ← ``key=value`` ``overrides``;
    validated, interpolations resolved."""
    cfg = _writable_schema()
    for p in paths:
        for path, loaded in _read_file(Path(p)):
            cfg = _merge(cfg, _replace_whole_entries(loaded, 0), f"{path}: ")
    for ov in overrides:
        key = ov.split("=", 1)[0]
        if "=" not in ov or not _DOTTED_KEY.fullmatch(key):
            raise ConfigError(f"override {ov!r}: expected key=value with a dotted key (e.g. search.num_trials=4)")
        try:
            dot = OmegaConf.from_dotlist([ov])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"override {ov!r}: the value is not valid YAML ({first_line(e)})") from None
        cfg = _merge(cfg, _replace_whole_entries(dot, len(key.split("."))), f"override {ov!r}: ")
    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, "") from None
    obj = _expand_user_paths(obj)
    obj.validate()
    return obj


def _expand_user_paths(cfg: Config) -> Config:
    d = cfg.data
    paths = {f.name: str(Path(getattr(d, f.name)).expanduser()) for f in dataclasses.fields(d)
             if f.name in ("demo_dir", "new_train", "new_dev", "new_test", "original_train",
                           "original_dev", "original_test", "replay_manifest", "distill_manifest", "cache_dir")
             and getattr(d, f.name)}
    for kind in ("targets", "protected"):
        paths[kind] = [dataclasses.replace(s, **{k: str(Path(getattr(s, k)).expanduser()) for k in ("dev", "test")
                                                 if getattr(s, k)}) for s in getattr(d, kind)]
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **paths))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``config show`` prints and results store)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (for JSON files and Ray)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (validated)."""
    cfg = OmegaConf.merge(_writable_schema(), OmegaConf.create(d))
    obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    obj.validate()
    return obj
