"""The contract every registered loss keeps, checked once here for each entry of the registry.

Each loss has one entry in ``CONTRACTS``: a float64 brute-force reference written in this file
(loops over positions and classes, sharing no code with ``seglm.losses``), the option settings
to check, and its value for a certain correct prediction. Every check below runs for every entry:
the value and gradient match the reference, the gradient is the value's derivative (gradcheck;
not for losses with a detached factor, whose reference detaches the same factor), ignored
positions change nothing, an all-ignored input gives a connected zero, half precision is computed
in float32, chunking changes nothing, the objective's term equals the function, the fused output
layer equals the materialised logits, bad shapes, targets and option values are refused.
A new loss is one file under ``seglm/losses`` plus one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from seglm import losses
from seglm.losses import LossSpec, Objective, get_term, set_loss, token_loss
from seglm.losses.fused import fused_objective_loss
from seglm.losses.registry import loss_names
from seglm.schema import ConfigError

from ._helpers import (
    BAD_SHAPES,
    IGNORE,
    POISONS,
    assert_all_ignored_gives_connected_zero,
    assert_gradcheck,
    assert_half_precision_matches_float32,
    assert_ignored_positions_inert,
    assert_matches_reference,
    assert_rejects_bad_input,
    assert_rejects_out_of_range_targets,
    assert_unchanged_in_small_chunks,
    loss_inputs,
    mean_or_zero,
    per_token_reference,
    random_inputs,
)
from .test_gdice import reference_gdice
from .test_lovasz import reference_lovasz

CONTRACT_PROPERTY = settings(max_examples=12, deadline=None, derandomize=True, database=None)


# -- float64 brute-force references ------------------------------------------------------------


def _per_token(loss_of: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    """A reference from ``loss_of(p_t, 1 - p_t)`` (see ``per_token_reference``)."""

    def reference(logits: Tensor, targets: Tensor, **_: Any) -> Tensor:
        return per_token_reference(logits, targets, loss_of)

    return reference


def reference_focal(logits: Tensor, targets: Tensor, gamma: float = 2.0, **_: Any) -> Tensor:
    return per_token_reference(logits, targets, lambda p, rest: -(rest**gamma) * torch.log(p))


def reference_sadl(
    logits: Tensor, targets: Tensor, alpha: float = 1.0, gamma: float = 1.0, **_: Any
) -> Tensor:
    def sadl(p_t: Tensor, rest: Tensor) -> Tensor:
        p_tilde = rest**alpha * p_t
        return 1 - (2 * p_tilde + gamma) / (p_tilde + 1 + gamma)

    return per_token_reference(logits, targets, sadl)


def reference_prob(logits: Tensor, targets: Tensor, k: float = 1.0, **_: Any) -> Tensor:
    return per_token_reference(logits, targets, lambda p_t, rest: 1 - p_t**k)


def top_k_entropy(row: Tensor, k: int) -> float:
    """H of the softmax over the k largest logits of ``row``, divided by ln k: by plain loops."""
    top = sorted(row.tolist(), reverse=True)[: min(k, len(row))]
    total = sum(math.exp(x - top[0]) for x in top)
    probs = [math.exp(x - top[0]) / total for x in top]
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return entropy / math.log(max(min(k, len(row)), 2))


def reference_eaft(
    logits: Tensor, targets: Tensor, k: int = 20, alpha: float = 1.0, **_: Any
) -> Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    values = []
    for i, y in enumerate(targets.reshape(-1).tolist()):
        if y != IGNORE:
            weight = top_k_entropy(flat[i].detach(), k) ** alpha
            values.append(-weight * torch.log_softmax(flat[i], dim=0)[y])
    return mean_or_zero(values, logits)


def reference_asft(
    logits: Tensor, targets: Tensor, reference_logits: Tensor, alpha: float = 0.1, **_: Any
) -> Tensor:
    """-sg(p_t) log p_t + alpha KL(q || p), the KL summed class by class."""
    flat = logits.reshape(-1, logits.shape[-1])
    anchor = reference_logits.reshape(flat.shape)
    values = []
    for i, y in enumerate(targets.reshape(-1).tolist()):
        if y == IGNORE:
            continue
        log_p = torch.log_softmax(flat[i], dim=0)
        log_q = torch.log_softmax(anchor[i], dim=0)
        kl = sum(log_q[c].exp() * (log_q[c] - log_p[c]) for c in range(flat.shape[1]))
        values.append(-log_p[y].exp().detach() * log_p[y] + alpha * kl)
    return mean_or_zero(values, logits)


def _set_reference(reference: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def call(logits: Tensor, targets: Tensor, group: str = "batch", **options: Any) -> Tensor:
        options.pop("reference_logits", None)
        return reference(logits, targets, group=group, **options)

    return call


@dataclass(frozen=True)
class Contract:
    """What one loss promises. ``options``: the settings checked (the first, the defaults);
    ``perfect(options)``: its value when every target has probability 1; ``detached``: a factor
    of the loss is detached, so its gradient is not its value's derivative (no gradcheck)."""

    reference: Callable[..., Tensor]
    options: tuple[dict[str, Any], ...] = ({},)
    perfect: Callable[[dict[str, Any]], float] = lambda options: 0.0
    detached: bool = False
    # Options under which ``perfect`` holds exactly (generalized dice's smoothing shifts it).
    perfect_options: dict[str, Any] = field(default_factory=dict)
    # A value outside each option's range, and the words the refusal must contain.
    bad_options: tuple[dict[str, Any], ...] = field(default_factory=tuple)


CONTRACTS: dict[str, Contract] = {
    "ce": Contract(_per_token(lambda p_t, rest: -torch.log(p_t))),
    "focal": Contract(
        reference_focal,
        options=({}, {"gamma": 0.0}, {"gamma": 0.5}, {"gamma": 3.5}),
        bad_options=({"gamma": -1.0},),
    ),
    "sadl": Contract(
        reference_sadl,
        options=({}, {"alpha": 0.0, "gamma": 1.0}, {"alpha": 2.0, "gamma": 0.5}),
        # p~ = (1 - p_t)^alpha p_t is 0 at p_t = 1 for alpha > 0: 1 - gamma / (1 + gamma).
        perfect=lambda o: 0.0 if o.get("alpha", 1.0) == 0 else 1 / (1 + o.get("gamma", 1.0)),
        bad_options=({"alpha": -1.0}, {"gamma": -0.5}),
    ),
    "dft": Contract(_per_token(lambda p_t, rest: -p_t.detach() * torch.log(p_t)), detached=True),
    "prob": Contract(
        reference_prob, options=({}, {"k": 10.0}, {"k": 0.5}), bad_options=({"k": 0.0},)
    ),
    "eaft": Contract(
        reference_eaft,
        options=({}, {"k": 3, "alpha": 2.0}),
        detached=True,
        bad_options=({"k": 1}, {"alpha": -0.5}),
    ),
    "asft": Contract(
        reference_asft, options=({}, {"alpha": 1.0}), detached=True, bad_options=({"alpha": -1},)
    ),
    "gdice": Contract(
        _set_reference(reference_gdice),
        options=(
            {},
            {"weighting": "simple", "absent": "max", "smooth": 0.1},
            {"weighting": "uniform"},
        ),
        perfect_options={"smooth": 0.0},
        bad_options=({"weighting": "cubic"}, {"absent": "all"}, {"smooth": -1.0}),
    ),
    "lovasz": Contract(_set_reference(reference_lovasz)),
}
GROUP_CASES = ("batch", "sequence")


def cases(*, with_options: bool = True) -> list[Any]:
    """(loss, options, group) for every contract: each option setting, each group of a set loss."""
    found = []
    for name, contract in CONTRACTS.items():
        groups = GROUP_CASES if get_term(name).is_set else ("batch",)
        for options in contract.options if with_options else contract.options[:1]:
            for group in groups:
                label = ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"
                found.append(pytest.param(name, options, group, id=f"{name}-{label}-{group}"))
    return found


def anchor_for(logits: Tensor) -> Tensor:
    """A reference model's logits of the same shape (used by the losses that take one), rounded
    to bf16 so that every dtype holds the same values."""
    generator = torch.Generator().manual_seed(logits.numel())
    values = torch.randn(logits.shape, generator=generator, dtype=torch.float64)
    return values.to(torch.bfloat16).to(logits.dtype)


def implementation(name: str, options: dict[str, Any], group: str) -> Callable[..., Tensor]:
    """The loss as seglm computes it, for ``(logits, targets)``."""

    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        if get_term(name).is_set:
            return set_loss(name, logits, targets, group, **options)
        anchor = anchor_for(logits) if get_term(name).uses_reference else None
        return token_loss(name, logits, targets, reference_logits=anchor, **options)

    return loss


def reference(name: str, options: dict[str, Any], group: str) -> Callable[..., Tensor]:
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        extra = {"reference_logits": anchor_for(logits)} if get_term(name).uses_reference else {}
        if get_term(name).is_set:
            extra["group"] = group
        return CONTRACTS[name].reference(logits, targets, **extra, **options)

    return loss


# -- the contract ------------------------------------------------------------------------------


def test_every_registered_loss_has_a_contract() -> None:
    assert set(CONTRACTS) == set(loss_names())


@pytest.mark.parametrize(("name", "options", "group"), cases())
@CONTRACT_PROPERTY
@given(inputs=loss_inputs())
def test_matches_brute_force(
    name: str, options: dict[str, Any], group: str, inputs: tuple[Tensor, Tensor]
) -> None:
    assert_matches_reference(
        implementation(name, options, group), reference(name, options, group), *inputs
    )


@pytest.mark.parametrize(("name", "options", "group"), cases())
def test_gradient_is_the_derivative_of_the_value(
    name: str, options: dict[str, Any], group: str
) -> None:
    if CONTRACTS[name].detached:
        pytest.skip("a detached factor: the brute-force gradient check above is the test")
    logits, targets = random_inputs(seed=6, batch=2, length=3, vocab=4)
    assert_gradcheck(implementation(name, options, group), logits, targets)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
@CONTRACT_PROPERTY
@given(inputs=loss_inputs(ignored_shares=(0.3, 0.7)), poison=st.sampled_from(POISONS))
def test_ignored_positions_have_no_influence(
    name: str, options: dict[str, Any], group: str, inputs: tuple[Tensor, Tensor], poison: float
) -> None:
    assert_ignored_positions_inert(implementation(name, options, group), *inputs, poison)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
@pytest.mark.parametrize("shape", [(2, 3, 5), (4, 5)])
def test_all_ignored_is_connected_zero(
    name: str, options: dict[str, Any], group: str, shape: tuple[int, ...], any_dtype: torch.dtype
) -> None:
    if group == "sequence" and len(shape) == 2:
        pytest.skip("sequence groups need [B, T, V] logits")
    loss = implementation(name, options, group)
    if get_term(name).uses_reference:  # NaN logits: the anchor must not be NaN
        loss = _with_anchor(name, options, torch.zeros(shape, dtype=any_dtype))
    assert_all_ignored_gives_connected_zero(loss, shape, any_dtype)


def _with_anchor(name: str, options: dict[str, Any], anchor: Tensor) -> Callable[..., Tensor]:
    return lambda logits, targets: token_loss(
        name, logits, targets, reference_logits=anchor, **options
    )


@pytest.mark.parametrize(("name", "options", "group"), cases())
def test_value_of_a_certain_correct_prediction(
    name: str, options: dict[str, Any], group: str
) -> None:
    options = {**options, **CONTRACTS[name].perfect_options}
    targets = torch.tensor([[0, 2, 1, IGNORE], [1, 1, 0, 2]])
    logits = 60.0 * torch.nn.functional.one_hot(targets.clamp_min(0), 4).double()
    if get_term(name).uses_reference:  # the model is its own reference: no KL
        value = token_loss(name, logits, targets, reference_logits=logits, **options)
    else:
        value = implementation(name, options, group)(logits, targets)
    expected = CONTRACTS[name].perfect(options)
    assert value.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
def test_half_precision_is_computed_in_float32(
    name: str, options: dict[str, Any], group: str, half_dtype: torch.dtype
) -> None:
    assert_half_precision_matches_float32(implementation(name, options, group), half_dtype)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
def test_small_chunks_change_nothing(
    name: str, options: dict[str, Any], group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits, targets = random_inputs(seed=8, batch=3, length=4, vocab=6)
    assert_unchanged_in_small_chunks(
        implementation(name, options, group), logits, targets, monkeypatch
    )


@pytest.mark.parametrize(("name", "options", "group"), cases())
def test_objective_term_is_the_function(name: str, options: dict[str, Any], group: str) -> None:
    """The term in an objective (which shifts the labels itself) is the function on the
    shifted positions, with the options written in the spec."""
    logits, targets = random_inputs(seed=4, vocab=7)
    labels = torch.cat([torch.full_like(targets[:, :1], IGNORE), targets[:, :-1]], dim=1)
    logits = torch.cat([logits[:, 1:], logits[:, :1]], dim=1)  # position t predicts label t + 1
    written = ",".join(f"{k}={v}" for k, v in options.items())
    spec = f"{name}({written})@all=1" if written else f"{name}@all=1"
    if get_term(name).is_set:
        spec = spec.replace("@all", "")
    anchor = anchor_for(logits)
    out = Objective(LossSpec.parse(spec), group=group)(logits, labels, reference_logits=anchor)
    shifted = labels[:, 1:]
    expected_logits = logits[:, :-1]
    if get_term(name).is_set:
        expected = set_loss(name, expected_logits, shifted, group, **options)
    else:
        expected = token_loss(
            name, expected_logits, shifted, reference_logits=anchor[:, :-1], **options
        )
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
@pytest.mark.parametrize("trained_head", [True, False], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("scope", ["answer", "all"])
def test_fused_output_layer_equals_materialised_logits(
    name: str, options: dict[str, Any], group: str, trained_head: bool, scope: str
) -> None:
    """``fused_objective_loss`` from hidden states and the head's weight gives the objective's
    value and gradients on the materialised logits, in chunks of 3 rows: the term beside CE
    over the answer, or alone over every token."""
    if scope == "all" and get_term(name).is_set:
        pytest.skip("a set loss is defined over the answer only")
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(9, (3, 6), generator=generator)
    labels[0, 4:] = IGNORE
    answer_mask = torch.zeros(3, 6, dtype=torch.bool)
    answer_mask[:, 3:] = True
    spec = f"ce=0.5,{name}@answer=0.5" if scope == "answer" else f"{name}@all=1"
    objective = Objective(LossSpec.parse(spec), group=group)
    anchor_hidden = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)

    def run(fused: bool) -> tuple[Tensor, ...]:
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_(trained_head)
        reference = (anchor_hidden, weight, None) if objective.uses_reference else None
        if fused:
            out = fused_objective_loss(
                objective, h, w, labels, answer_mask, chunk_size=3, reference=reference
            )
        else:
            anchor = None if reference is None else anchor_hidden @ weight.T
            out = objective(h @ w.T, labels, answer_mask, reference_logits=anchor)
        grads = torch.autograd.grad(out.loss, [h, w] if trained_head else [h])
        return (out.loss.detach(), *grads)

    for fused_value, expected in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(fused_value, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
@pytest.mark.parametrize(("logits_shape", "targets_shape", "message"), BAD_SHAPES)
def test_rejects_bad_shapes(
    name: str,
    options: dict[str, Any],
    group: str,
    logits_shape: tuple[int, ...],
    targets_shape: tuple[int, ...],
    message: str,
) -> None:
    assert_rejects_bad_input(
        implementation(name, options, group), logits_shape, targets_shape, message
    )


@pytest.mark.parametrize(("name", "options", "group"), cases(with_options=False))
def test_rejects_out_of_range_targets(name: str, options: dict[str, Any], group: str) -> None:
    assert_rejects_out_of_range_targets(implementation(name, options, group))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        pytest.param(name, bad, id=f"{name}-{next(iter(bad))}")
        for name, contract in CONTRACTS.items()
        for bad in contract.bad_options
    ],
)
def test_refuses_option_values_out_of_range(name: str, bad: dict[str, Any]) -> None:
    """In a spec, as an objective's keyword (the config field's name) and in the function."""
    ((option, value),) = bad.items()
    field_name = get_term(name).field_name(option)
    with pytest.raises(ValueError, match=field_name):
        LossSpec.parse(f"{name}({option}={value})")
    with pytest.raises(ConfigError, match=field_name):
        Objective(name, **{field_name: value})
    logits, targets = random_inputs(seed=1)
    with pytest.raises(ConfigError, match=field_name):
        implementation(name, bad, "batch")(logits, targets)


@pytest.mark.parametrize(
    ("function", "name"),
    [
        (losses.focal_loss, "focal"),
        (losses.self_adjusting_dice_loss, "sadl"),
        (losses.generalized_dice_loss, "gdice"),
        (losses.FocalLoss, "focal"),
        (losses.SelfAdjustingDiceLoss, "sadl"),
        (losses.GeneralizedDiceLoss, "gdice"),
    ],
)
def test_named_functions_default_to_the_registry(function: Callable[..., Any], name: str) -> None:
    import inspect

    parameters = inspect.signature(function).parameters
    for option, declared in get_term(name).options.items():
        assert parameters[option].default == declared.default
