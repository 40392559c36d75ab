"""How a config value is checked: one ConfigError naming the key, the value found and what is allowed."""

from __future__ import annotations

import math
from typing import Any, Sequence

from raysearch_adapters.errors import UserError
from raysearch_adapters.hparams import fields_of, value_problem


class ConfigError(UserError):
    """A bad configuration value or key; the message names the key, the value and what is allowed."""


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: got {value!r}; {allowed}")


def check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        fail(key, value, "must be a number")
    if isinstance(value, float) and math.isinf(value):  # it would be written to JSON as the non-standard Infinity
        fail(key, value, "must be a finite number (for no limit, give a large one)")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        fail(key, value, "must be " + " and ".join(s for s in (lo, hi) if s))


def check_param(key: str, name: str, value: Any) -> None:
    problem = value_problem(name, value)
    if problem:
        fail(key, value, problem)


def check_hparam_fields(section_cfg: Any, key: str, section: str) -> None:
    """The fields of ``section`` that a searched hyperparameter sets, each by that hyperparameter's rule."""
    for h in fields_of(section):
        value = getattr(section_cfg, h.key)
        for i, v in enumerate(value) if h.listed else [(None, value)]:
            check_param(f"{key}.{h.key}" + ("" if i is None else f"[{i}]"), h.name, v)
