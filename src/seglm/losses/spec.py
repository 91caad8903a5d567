"""Loss specs: ``"ce=0.6,lovasz=0.4"`` parsed once into a value that needs no torch.

Grammar (every name from the registry, :mod:`seglm.losses.registry`)::

    spec   := term ("," term)*
    term   := NAME ["(" option ("," option)* ")"] ["@" SCOPE] ["=" WEIGHT]
    option := KEY "=" VALUE          (the term's own options, e.g. prob(k=10))
    SCOPE  := "all" | "answer"

A lone term without a weight means weight 1; in a mixture every term needs one. ``NAME@all``
averages over every supervised token (prompt and answer), ``NAME@answer`` over the answer's
tokens; without a scope CE covers the objective's ``ce_scope`` and every other loss the answer.
Options written in a term override the run's option settings for that term only, so two arms of
one grid may differ in an option (``prob@answer=1`` against ``prob(k=10)@answer=1``).

The config, the grid file and the flags parse a spec when they are read (errors name the file,
line and field); the grid builds its arms with :meth:`LossSpec.mix`; the report classifies arms
with :meth:`LossSpec.ce_weights` without importing torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from seglm.schema import ConfigError, FiniteNumber, Integer, choice, validate

from .registry import LossTerm, Option, get_term

CE = "ce"
CE_SCOPES: tuple[str, ...] = ("all", "answer")
# How the set losses group positions: one group per micro-batch, or one per example.
GROUPS: tuple[str, ...] = ("batch", "sequence")
SCOPE_SEPARATOR = "@"
# Commas separate terms, except inside an option list: "sadl(alpha=1,gamma=2)=0.4,ce=0.6".
_TERM_SEPARATOR = re.compile(r",(?![^()]*\))")
_TERM = re.compile(
    r"^(?P<name>[^()@=]+)(?:\((?P<options>[^()]*)\))?(?:@(?P<scope>[^=]*))?(?:=(?P<weight>.*))?$"
)


def option_type(option: Option) -> Any:
    """The settings schema type of one loss option: its kind and its declared range."""
    if option.choices:
        return choice(option.choices)
    base = Integer if option.kind is int else FiniteNumber
    bounds = {
        k: getattr(option, k) for k in ("ge", "gt", "le", "lt") if getattr(option, k) is not None
    }
    return Annotated[base, Field(**bounds)] if bounds else base


@cache
def _option_adapter(option: Option) -> TypeAdapter[Any]:
    return TypeAdapter(option_type(option))


def option_value(term: LossTerm, name: str, value: Any) -> Any:
    """``value`` checked as option ``name`` of ``term``, or a ConfigError naming both."""
    if name not in term.options:
        known = ", ".join(term.options) or "none"
        raise ConfigError(f"loss {term.name!r} has no option {name!r} (its options: {known})")
    return validate(_option_adapter(term.options[name]), value, term.field_name(name), "option")


@dataclass(frozen=True)
class Term:
    """One weighted term of a spec. ``scope`` is None where the loss's own default applies
    (answer for every loss but CE, whose default is the objective's ``ce_scope``)."""

    name: str
    weight: float
    scope: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """How the objective names the term (and logs it: ``loss_<key>``): ``ce``,
        ``ce@answer``, ``focal@all``, ``lovasz``."""
        return self.name if self.scope is None else f"{self.name}{SCOPE_SEPARATOR}{self.scope}"

    @property
    def term(self) -> LossTerm:
        return get_term(self.name)

    def scope_in(self, ce_scope: str) -> str:
        """The tokens the term averages over: ``all`` or ``answer``."""
        if self.scope is not None:
            return self.scope
        return ce_scope if self.name == CE else "answer"

    def __str__(self) -> str:
        options = ",".join(f"{k}={_text(v)}" for k, v in self.options)
        written = self.name + (f"({options})" if options else "")
        if self.scope is not None:
            written += f"{SCOPE_SEPARATOR}{self.scope}"
        return f"{written}={self.weight:g}"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class LossSpec(str):
    """A parsed loss spec: the canonical text (``ce=0.6,lovasz=0.4``), so it reads, compares,
    prints and serialises as the text it is, with its terms in the order written. Two specs that
    differ only in term order or spelling (aliases, ``lovasz@answer`` for ``lovasz``) have equal
    :meth:`identity`."""

    terms: tuple[Term, ...]

    def __new__(cls, terms: tuple[Term, ...]) -> LossSpec:
        spec = super().__new__(cls, ",".join(str(term) for term in terms))
        spec.terms = terms
        return spec

    def __getnewargs__(self) -> tuple[tuple[Term, ...]]:  # type: ignore[override]
        return (self.terms,)  # what pickle and copy pass to __new__

    @classmethod
    def parse(cls, text: str | LossSpec) -> LossSpec:
        """Parse a spec or raise a ValueError that quotes it and says what is wrong."""
        if isinstance(text, LossSpec):
            return text
        if not isinstance(text, str):
            raise ValueError(f"a loss spec is text such as 'ce=0.6,lovasz=0.4', got {text!r}")
        items = [part.strip() for part in _TERM_SEPARATOR.split(text) if part.strip()]
        if not items:
            raise ValueError(f"loss spec {text!r} names no loss")
        terms = [_parse_term(item, text, alone=len(items) == 1) for item in items]
        keys = [term.key for term in terms]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"loss spec {text!r}: {key!r} appears twice")
        if not any(term.weight > 0 for term in terms):
            raise ValueError(f"loss spec {text!r}: at least one loss weight must be positive")
        return cls(tuple(terms))

    @classmethod
    def mix(cls, loss: str, lam: float) -> LossSpec:
        """The paper's form ``lam * CE + (1 - lam) * loss`` (CE alone for ``ce``)."""
        if not 0 <= lam <= 1:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        name = get_term(loss).name
        if name == CE:
            return cls((Term(CE, 1.0),))
        return cls((Term(CE, lam), Term(name, round(1 - lam, 12))))

    @property
    def weights(self) -> dict[str, float]:
        """Weights by term key, in the order written."""
        return {term.key: term.weight for term in self.terms}

    def identity(self) -> frozenset[tuple[str, float, tuple[tuple[str, Any], ...]]]:
        """What the spec trains, whatever its term order."""
        return frozenset((term.key, term.weight, term.options) for term in self.terms)

    def ce_weights(self, ce_scope: str) -> dict[str, float] | None:
        """A spec made of CE terms only, as weights per scope (``{"all": 0.6, "answer": 0.4}``);
        None when another loss takes part."""
        if any(term.name != CE for term in self.terms):
            return None
        weights: dict[str, float] = {}
        for term in self.terms:
            scope = term.scope_in(ce_scope)
            weights[scope] = weights.get(scope, 0.0) + term.weight
        return weights

    def ce_all_weight(self, ce_scope: str) -> float:
        """λ: the weight of CE over all supervised tokens, relative to the total weight."""
        total = sum(term.weight for term in self.terms)
        ce_all = sum(
            term.weight
            for term in self.terms
            if term.name == CE and term.scope_in(ce_scope) == "all"
        )
        return ce_all / total

    def label_scope(self, ce_scope: str) -> str:
        """The widest scope of any term: ``all`` when a term needs the prompt's labels."""
        scopes = {term.scope_in(ce_scope) for term in self.terms if term.weight > 0}
        return "all" if "all" in scopes else "answer"

    @property
    def losses(self) -> tuple[LossTerm, ...]:
        """The registered terms the spec uses (each once)."""
        return tuple({term.name: term.term for term in self.terms}.values())


def _parse_term(item: str, spec: str, alone: bool) -> Term:
    match = _TERM.match(item)
    if match is None:
        raise ValueError(
            f"loss spec {spec!r}: cannot read term {item!r} "
            "(expected NAME, NAME=WEIGHT, NAME@SCOPE=WEIGHT or NAME(OPTION=VALUE)=WEIGHT)"
        )
    written = match["name"].strip()
    if match["weight"] is None and not alone:
        raise ValueError(
            f"loss spec {spec!r}: {written!r} has no weight; in a mixture every term needs "
            f"one (e.g. {written}=0.4)"
        )
    term = get_term(written)
    scope = _scope(term, match["scope"], item)
    weight = _weight(match["weight"], written, spec)
    options = _options(term, match["options"], spec)
    return Term(term.name, weight, scope, options)


def _scope(term: LossTerm, written: str | None, item: str) -> str | None:
    if written is None:
        return None
    scope = written.strip().lower()
    if scope not in CE_SCOPES:
        raise ValueError(
            f"term {item!r}: scope {scope!r} is not one of {', '.join(CE_SCOPES)} "
            f"(NAME{SCOPE_SEPARATOR}all: every supervised token; "
            f"NAME{SCOPE_SEPARATOR}answer: answer tokens only)"
        )
    if term.is_set and scope == "all":
        raise ValueError(
            f"term {item!r}: {term.name} is a set loss over the answer's tokens; "
            f"{SCOPE_SEPARATOR}all is offered for per-token losses only"
        )
    # The answer is every loss's own scope but CE's, whose default is the objective's ce_scope.
    return None if scope == "answer" and term.name != CE else scope


def _weight(written: str | None, name: str, spec: str) -> float:
    if written is None:
        return 1.0
    try:
        weight = float(written)
    except ValueError:
        raise ValueError(
            f"loss spec {spec!r}: weight of {name!r} is not a number: {written!r}"
        ) from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"loss spec {spec!r}: weight of {name!r} must be a finite number >= 0, got {weight:g}"
        )
    return weight


def _options(term: LossTerm, written: str | None, spec: str) -> tuple[tuple[str, Any], ...]:
    if written is None:
        return ()
    options: dict[str, Any] = {}
    for pair in (part.strip() for part in written.split(",") if part.strip()):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"loss spec {spec!r}: option {pair!r} of {term.name} is not KEY=VALUE")
        if key in options:
            raise ValueError(f"loss spec {spec!r}: option {key!r} of {term.name} appears twice")
        try:
            options[key] = option_value(term, key, value.strip())
        except ConfigError as error:
            raise ValueError(f"loss spec {spec!r}: {error}") from None
    return tuple(sorted(options.items()))


def parse_loss_spec(spec: str) -> dict[str, float]:
    """A spec's weights by term key (``{"ce": 0.6, "lovasz": 0.4}``)."""
    return LossSpec.parse(spec).weights


def canonical_loss_name(name: str) -> str:
    """A loss name or alias as its short name, or a ValueError with a suggestion."""
    return get_term(name).name


def split_term(key: str) -> tuple[str, str | None]:
    """``"ce@answer"`` -> ``("ce", "answer")``; ``"lovasz"`` -> ``("lovasz", None)``."""
    name, sep, scope = key.partition(SCOPE_SEPARATOR)
    return canonical_loss_name(name), (scope.strip().lower() if sep else None)
