"""Unlearning methods, found by name. Adding one touches one file: define it and `@register_method`."""
from __future__ import annotations

from trust_unlearn.errors import UserError

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
    from trust_unlearn.methods import trust  # noqa: F401
    from trust_unlearn.methods import ablations, conceptprune, esd, salun, uce  # noqa: F401
