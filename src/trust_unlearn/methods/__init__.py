"""Unlearning methods, found by name. Adding one touches one file: define it and `@register_method`
(and, for a trained method, its settings in tuned.yaml)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from trust_unlearn.errors import UserError

TUNED_PATH = Path(__file__).with_name("tuned.yaml")

METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type:
    _import_builtin()
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def _import_builtin() -> None:
    from trust_unlearn.methods import trust, trust_robust  # noqa: F401
    from trust_unlearn.methods import ablations, advunlearn, conceptprune, esd, salun, uce  # noqa: F401


@lru_cache(maxsize=1)
def _tuned() -> dict:
    return yaml.safe_load(TUNED_PATH.read_text())


def tuned_entry(method: str, method_args: dict, testbed: bool) -> tuple[str | None, dict]:
    """(key, entry) of tuned.yaml for a run: the most specific key whose options all match `method_args`
    (e.g. `trust:reg=csr` for a CSR run), TRUST's variants falling back to `trust`; (None, {}) if none."""
    table = _tuned()["testbed" if testbed else "stable-diffusion"]
    names = [method] + (["trust"] if method.startswith("trust-") else [])
    best, best_size = None, -1
    for key in table:
        name, _, rest = key.partition(":")
        options = dict(item.split("=", 1) for item in rest.split(",") if item)
        if name in names and all(_option_matches(method_args.get(k), v) for k, v in options.items()):
            size = len(options) + 10 * (name == method)
            if size > best_size:
                best, best_size = key, size
    return best, (table[best] if best else {})


def _option_matches(value, text: str) -> bool:
    """A run's option value against a tuned.yaml key's text: numbers by value (alpha 2.0 matches alpha=2)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(text) == value
        except ValueError:
            return False
    return str(value).lower() == text.lower()


def tuned_settings(method: str, method_args: dict, testbed: bool) -> dict:
    """{"common", "method_args"}: the training options (lr, steps, batch, ...) and method options a run of
    `method` starts from (the run's own options override both). A variant falling back to another method's
    entry (trust-robust, trust-static -> trust) takes its method options except those the variant defines
    itself (trust-static's mask_every 0 stays 0)."""
    from dataclasses import fields

    key, entry = tuned_entry(method, method_args, testbed)
    args = dict(entry.get("method_args", {}))
    base = key.partition(":")[0] if key else method
    if base != method:
        own = {f.name: f.default for f in fields(get_method(method).config_cls)}
        inherited = {f.name: f.default for f in fields(get_method(base).config_cls)}
        args = {k: v for k, v in args.items() if k in own and own[k] == inherited.get(k)}
    return {"common": dict(entry.get("common", {})), "method_args": args}
