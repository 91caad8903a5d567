"""The loss registry: every loss term seglm can train with, declared once in its own file.

A loss file (``seglm/losses/NAME.py``) declares one :class:`LossTerm` and registers it with
:func:`register`: its name and aliases, its kind, its options (type, default, range, help) and a
one-line summary. Everything else is derived from the registry: the loss-spec grammar
(:mod:`seglm.losses.spec`), the objective's dispatch and its fused path, the training config's
option fields and flags (``focal_gamma``, ``--focal-gamma``), ``seglm losses`` and the help texts.

Two kinds of term:

- ``token``: a per-token function of the token's cross-entropy ``ce = -log p_t`` (a ``[n]``
  tensor), optionally of a detached statistic of the token's whole row of logits
  (``row_statistic``: computed once per chunk of rows, under ``no_grad``), and optionally of
  ``kl``, each token's KL(π_ref ‖ π_θ) from a reference model (``uses_reference``). The term's
  value is the mean of the function over the tokens of its scope.
- ``set``: a function of the present-class probabilities of a group of answer tokens
  (generalized dice, Lovász-Softmax); defined over the answer only.

This module imports no torch: the spec grammar, the config and the report read the registry
without it. Loss files compute with tensor methods and import torch inside the functions that
need it, so that declaring a loss stays free of torch too.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["token", "set"]
KINDS: tuple[str, ...] = ("token", "set")


@dataclass(frozen=True)
class Option:
    """One option of a loss term: its default (whose type is the option's type), a help text
    and, for numbers, a range; for text, the allowed choices."""

    default: float | int | str
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe_range(self) -> str:
        """The range in words (``>= 0``, ``one of square, simple``), or ``""``."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        bounds = [
            f"{word} {value:g}"
            for word, value in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if value is not None
        ]
        return " and ".join(bounds)


@dataclass(frozen=True)
class LossTerm:
    """A loss term's declaration; see the module docstring for the two kinds.

    ``compute`` is, for a token term, ``compute(ce, **options)`` (plus ``statistic=`` when the
    term has a ``row_statistic``, ``kl=`` when it ``uses_reference``) returning per-token values;
    for a set term, ``compute(present, **options)`` returning the group-averaged value.
    ``row_statistic(logits, **options)`` maps float logit rows ``[rows, V]`` to ``[rows]``.
    """

    name: str
    kind: Kind
    summary: str
    compute: Callable[..., Any]
    options: Mapping[str, Option] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    reference: str = ""
    row_statistic: Callable[..., Any] | None = None
    uses_reference: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"loss {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "set" and (self.row_statistic or self.uses_reference):
            raise ValueError(f"loss {self.name!r}: a set loss takes no row statistic or reference")

    @property
    def is_set(self) -> bool:
        return self.kind == "set"

    def field_name(self, option: str) -> str:
        """The training config's field for one option: ``focal_gamma``."""
        return f"{self.name}_{option}"

    def defaults(self) -> dict[str, Any]:
        return {name: option.default for name, option in self.options.items()}


_TERMS: dict[str, LossTerm] = {}
_ALIASES: dict[str, str] = {}
# The package's modules that are machinery, not losses (every other module declares one).
_MACHINERY = frozenset({"registry", "spec", "objective", "fused", "functional"})
_discovered = False


def register(term: LossTerm) -> LossTerm:
    """Add ``term`` to the registry (a loss file calls this once, at import); returns it."""
    for name in (term.name, *term.aliases):
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"loss name {name!r}: use lower-case letters, digits and '_'")
        owner = _ALIASES.get(name)
        if owner is not None and owner != term.name:
            raise ValueError(f"loss name {name!r} is already taken by {owner!r}")
    _TERMS[term.name] = term
    _ALIASES.update({name: term.name for name in (term.name, *term.aliases)})
    return term


def _discover() -> None:
    """Import the package's loss files once (each registers its term)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import seglm.losses as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_") and module.name not in _MACHINERY:
            importlib.import_module(f"seglm.losses.{module.name}")


def terms() -> dict[str, LossTerm]:
    """Every registered term by name: CE first, then alphabetically."""
    _discover()
    return {name: _TERMS[name] for name in sorted(_TERMS, key=lambda name: (name != "ce", name))}


def loss_names() -> tuple[str, ...]:
    """The short names, CE first, then alphabetically."""
    return tuple(terms())


def aliases() -> dict[str, str]:
    """Every accepted name (short names included) -> short name."""
    _discover()
    return dict(_ALIASES)


def get_term(name: str) -> LossTerm:
    """The term a name or alias means (case, ``-`` and spaces forgiven), or a ValueError with the
    closest name."""
    known = aliases()
    key = name.strip().lower().replace("-", "_")
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint} (known: {', '.join(loss_names())})")
    return _TERMS[known[key]]


def option_fields() -> dict[str, tuple[LossTerm, str, Option]]:
    """Every option of every term as the training config's field name -> (term, option)."""
    return {
        term.field_name(name): (term, name, option)
        for term in terms().values()
        for name, option in term.options.items()
    }
