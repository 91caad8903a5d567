"""The training objective: shifting, answer selection, weighting, normalisation, spec parsing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from seglm.losses import (
    ItemCounts,
    Objective,
    cross_entropy_loss,
    focal_loss,
    generalized_dice_loss,
    lovasz_softmax_loss,
    parse_loss_spec,
    self_adjusting_dice_loss,
)
from seglm.losses.registry import loss_names

from ._helpers import IGNORE, assert_unchanged_in_small_chunks, loss_and_grad

VOCAB = 9
# Non-default options, so that a term computed with the defaults would not match.
OPTIONS = {
    "focal_gamma": 1.5,
    "sadl_alpha": 2.0,
    "sadl_gamma": 0.5,
    "gdice_weighting": "simple",
    "gdice_absent": "max",
    "gdice_smooth": 0.1,
}
ANSWER_TERMS: dict[str, Callable[..., Tensor]] = {
    "focal": lambda x, y, group: focal_loss(x, y, gamma=1.5),
    "sadl": lambda x, y, group: self_adjusting_dice_loss(x, y, alpha=2.0, gamma=0.5),
    "gdice": lambda x, y, group: generalized_dice_loss(x, y, "simple", "max", group, smooth=0.1),
    "lovasz": lambda x, y, group: lovasz_softmax_loss(x, y, group),
}


def chat_batch(
    seed: int, batch: int = 4, length: int = 8, completion_only: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """float64 logits, unshifted labels and answer mask laid out as a collator makes them:
    prompt (1-3 tokens), answer with EOS (1-3 tokens), then padding labelled ``IGNORE``."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(batch, length, VOCAB, generator=generator, dtype=torch.float64)
    labels = torch.randint(VOCAB, (batch, length), generator=generator)
    answer_mask = torch.zeros(batch, length, dtype=torch.bool)
    lengths = torch.randint(1, 4, (batch, 2), generator=generator).tolist()
    for row, (prompt, answer) in enumerate(lengths):
        answer_mask[row, prompt : prompt + answer] = True
        labels[row, prompt + answer :] = IGNORE
        if completion_only:
            labels[row, :prompt] = IGNORE
    return logits, labels, answer_mask


def next_token_targets(labels: Tensor, keep: Tensor | None = None) -> Tensor:
    """Targets of ``logits[:, :-1]``: ``labels[:, 1:]``, ignored where ``keep[:, 1:]`` is not."""
    targets = labels[:, 1:]
    return targets if keep is None else targets.masked_fill(~keep[:, 1:].bool(), IGNORE)


def objective_loss(objective: Objective, *args: object) -> Callable[[Tensor, Tensor], Tensor]:
    """``objective`` as a loss function of (logits, labels), for the gradient helpers."""
    return lambda logits, labels: objective(logits, labels, *args).loss


def window_counts(labels: Tensor, answer_mask: Tensor) -> tuple[int, int]:
    """Supervised and answer tokens after the shift, as a trainer would count them."""
    supervised = next_token_targets(labels) != IGNORE
    return int(supervised.sum()), int((supervised & answer_mask[:, 1:]).sum())


# ---------------------------------------------------------------- what each term covers


def test_shifts_labels_itself() -> None:
    logits, labels, _ = chat_batch(seed=1)
    loss = Objective()(logits, labels).loss
    shifted_logits = logits[:, :-1].reshape(-1, VOCAB)
    expected = F.cross_entropy(shifted_logits, next_token_targets(labels).reshape(-1))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, cross_entropy_loss(logits[:, :-1], next_token_targets(labels)))


def test_last_position_predicts_nothing() -> None:
    logits, labels, answer_mask = chat_batch(seed=2)
    labels[:, -1] = 0  # even a supervised last label has no position predicting past it
    objective = Objective.from_spec("ce=0.5,focal=0.2,lovasz=0.3")
    clean_loss, clean_grad = loss_and_grad(objective_loss(objective, answer_mask), logits, labels)
    poisoned = logits.clone()
    poisoned[:, -1] = float("nan")
    loss, grad = loss_and_grad(objective_loss(objective, answer_mask), poisoned, labels)
    torch.testing.assert_close(loss, clean_loss)
    torch.testing.assert_close(grad[:, :-1], clean_grad[:, :-1])
    assert torch.equal(grad[:, -1], torch.zeros_like(grad[:, -1]))


@pytest.mark.parametrize("name", list(ANSWER_TERMS))
@pytest.mark.parametrize("group", ["sequence", "batch"])
def test_answer_terms_cover_shifted_answer_tokens(name: str, group: str) -> None:
    logits, labels, answer_mask = chat_batch(seed=3)
    objective = Objective(weights={name: 1.0}, group=group, **OPTIONS)
    targets = next_token_targets(labels, answer_mask)

    def expected_fn(x: Tensor, _: Tensor) -> Tensor:
        return ANSWER_TERMS[name](x[:, :-1], targets, group)

    loss, grad = loss_and_grad(objective_loss(objective, answer_mask), logits, labels)
    expected_loss, expected_grad = loss_and_grad(expected_fn, logits, labels)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


def test_objective_group_defaults_to_sequence() -> None:
    logits, labels, answer_mask = chat_batch(seed=4)
    targets = next_token_targets(labels, answer_mask)
    loss = Objective(weights={"lovasz": 1.0})(logits, labels, answer_mask).loss
    sequence = lovasz_softmax_loss(logits[:, :-1], targets, group="sequence")
    torch.testing.assert_close(loss, sequence)
    assert abs(loss - lovasz_softmax_loss(logits[:, :-1], targets, group="batch")) > 1e-6


def test_ce_scope_all_covers_prompt_and_answer() -> None:
    logits, labels, answer_mask = chat_batch(seed=5)
    out = Objective.from_spec("ce=0.6,focal=0.4", ce_scope="all")(logits, labels, answer_mask)
    expected = cross_entropy_loss(logits[:, :-1], next_token_targets(labels))
    torch.testing.assert_close(out.components["ce"], expected)


def test_ce_scope_answer_covers_answer_tokens_only() -> None:
    logits, labels, answer_mask = chat_batch(seed=5)
    out = Objective.from_spec("ce=0.6,focal=0.4", ce_scope="answer")(logits, labels, answer_mask)
    expected = cross_entropy_loss(logits[:, :-1], next_token_targets(labels, answer_mask))
    torch.testing.assert_close(out.components["ce"], expected)
    everything = cross_entropy_loss(logits[:, :-1], next_token_targets(labels))
    assert abs(out.components["ce"] - everything) > 1e-3


def test_each_term_averages_over_its_own_scope() -> None:
    """``ce=0.6,ce@answer=0.4``: CE over prompt + answer and CE over the answer alone, each a
    mean over its own tokens (brute force below); ignoring the scope would give CE(all)."""
    logits, labels, answer_mask = chat_batch(seed=5)
    out = Objective.from_spec("ce=0.6,ce@answer=0.4,focal@all=0.2,sadl=0.1")(
        logits, labels, answer_mask
    )
    everything, answer = next_token_targets(labels), next_token_targets(labels, answer_mask)
    flat = logits[:, :-1].reshape(-1, VOCAB)
    log_probs = torch.log_softmax(flat, dim=1)
    token_ce = {
        i: -log_probs[i, y] for i, y in enumerate(everything.reshape(-1).tolist()) if y != IGNORE
    }
    in_answer = [i for i, y in enumerate(answer.reshape(-1).tolist()) if y != IGNORE]
    ce_all = sum(token_ce.values()) / len(token_ce)
    ce_answer = sum(token_ce[i] for i in in_answer) / len(in_answer)
    focal_all = sum((1 - torch.exp(-c)) ** 1.5 * c for c in token_ce.values()) / len(token_ce)
    torch.testing.assert_close(out.components["ce"], ce_all)
    torch.testing.assert_close(out.components["ce@answer"], ce_answer)
    objective = Objective.from_spec("focal@all", focal_gamma=1.5)
    torch.testing.assert_close(
        objective(logits, labels, answer_mask).components["focal@all"], focal_all
    )
    sadl = self_adjusting_dice_loss(logits[:, :-1], answer)
    torch.testing.assert_close(out.components["sadl"], sadl)
    assert abs(ce_answer - ce_all) > 1e-3  # the scope matters on this batch
    focal_default = focal_loss(logits[:, :-1], everything)
    expected = 0.6 * ce_all + 0.4 * ce_answer + 0.2 * focal_default + 0.1 * sadl
    torch.testing.assert_close(out.loss, expected)


def test_label_scope_is_the_widest_term_scope() -> None:
    assert Objective.from_spec("ce=0.6,lovasz=0.4").label_scope == "all"
    assert Objective.from_spec("ce@answer=1").label_scope == "answer"
    assert Objective.from_spec("ce@answer=0.5,dft@all=0.5").label_scope == "all"
    assert Objective.from_spec("ce", ce_scope="answer").label_scope == "answer"
    assert Objective.from_spec("ce@all", ce_scope="answer").label_scope == "all"


def test_answer_defaults_to_every_supervised_label() -> None:
    logits, labels, _ = chat_batch(seed=6, completion_only=True)
    objective = Objective.from_spec("ce=0.5,sadl=0.2,gdice=0.3", ce_scope="answer")
    everywhere = torch.ones_like(labels, dtype=torch.bool)
    torch.testing.assert_close(
        objective(logits, labels).loss, objective(logits, labels, everywhere).loss
    )


def test_answer_mask_is_intersected_with_supervised_labels() -> None:
    """Marking padding (label ``IGNORE``) as answer changes nothing; a 0/1 int mask works."""
    logits, labels, answer_mask = chat_batch(seed=7)
    objective = Objective.from_spec("ce=0.4,focal=0.3,lovasz=0.3", ce_scope="answer")
    expected = objective(logits, labels, answer_mask).loss
    with_padding = answer_mask | (labels == IGNORE)
    torch.testing.assert_close(objective(logits, labels, with_padding).loss, expected)
    torch.testing.assert_close(objective(logits, labels, answer_mask.long()).loss, expected)


def test_ignored_positions_have_no_influence() -> None:
    """Positions whose next label is ignored (and the last one) may hold inf/NaN logits."""
    logits, labels, answer_mask = chat_batch(seed=8)
    objective = Objective.from_spec("ce=0.4,focal=0.1,sadl=0.1,gdice=0.2,lovasz=0.2")
    loss_fn = objective_loss(objective, answer_mask)
    inert = F.pad(next_token_targets(labels) == IGNORE, (0, 1), value=True)
    assert inert.any() and not inert.all()
    clean_loss, clean_grad = loss_and_grad(loss_fn, logits, labels)
    for poison in (float("inf"), float("-inf"), float("nan")):
        poisoned = logits.clone()
        poisoned[inert] = poison
        loss, grad = loss_and_grad(loss_fn, poisoned, labels)
        torch.testing.assert_close(loss, clean_loss, rtol=0, atol=0)
        torch.testing.assert_close(grad[~inert], clean_grad[~inert], rtol=0, atol=0)
        assert torch.equal(grad[inert], torch.zeros_like(grad[inert]))


def test_prompt_logits_have_no_influence_without_ce() -> None:
    logits, labels, answer_mask = chat_batch(seed=9)
    objective = Objective.from_spec("focal=0.5,lovasz=0.5")
    answer = (next_token_targets(labels) != IGNORE) & answer_mask[:, 1:]
    not_answer = F.pad(~answer, (0, 1), value=True)
    poisoned = logits.clone()
    poisoned[not_answer] = float("nan")
    loss, grad = loss_and_grad(objective_loss(objective, answer_mask), poisoned, labels)
    torch.testing.assert_close(loss, objective(logits, labels, answer_mask).loss)
    assert torch.equal(grad[not_answer], torch.zeros_like(grad[not_answer]))


def test_gradcheck_of_a_full_mix() -> None:
    logits, labels, answer_mask = chat_batch(seed=10, batch=2, length=5)
    objective = Objective.from_spec("ce=0.4,focal=0.1,sadl=0.1,gdice=0.2,lovasz=0.2")
    leaf = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: objective(x, labels, answer_mask).loss, (leaf,))


def test_small_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, labels, answer_mask = chat_batch(seed=25)
    objective = Objective.from_spec("ce=0.4,focal=0.1,sadl=0.1,gdice=0.2,lovasz=0.2")
    loss_fn = objective_loss(objective, answer_mask)
    assert_unchanged_in_small_chunks(loss_fn, logits, labels, monkeypatch)


# ---------------------------------------------------------------- components and weights


def test_components_are_the_unweighted_detached_terms() -> None:
    logits, labels, answer_mask = chat_batch(seed=11)
    objective = Objective(weights={"ce": 0.5, "focal": 0.2, "gdice": 0.3}, **OPTIONS)
    leaf = logits.clone().requires_grad_(True)
    out = objective(leaf, labels, answer_mask)
    targets = next_token_targets(labels, answer_mask)
    expected = {
        "ce": cross_entropy_loss(logits[:, :-1], next_token_targets(labels)),
        "focal": ANSWER_TERMS["focal"](logits[:, :-1], targets, "sequence"),
        "gdice": ANSWER_TERMS["gdice"](logits[:, :-1], targets, "sequence"),
    }
    assert list(out.components) == list(expected)
    for name, value in out.components.items():
        assert not value.requires_grad
        torch.testing.assert_close(value, expected[name])
    weighted = sum(objective.weights[name] * value for name, value in expected.items())
    torch.testing.assert_close(out.loss, weighted)
    assert out.loss.requires_grad


def test_components_do_not_depend_on_normalisation() -> None:
    logits, labels, answer_mask = chat_batch(seed=12)
    objective = Objective.from_spec("ce=0.6,sadl=0.4")
    local = objective(logits, labels, answer_mask).components
    scaled = objective(logits, labels, answer_mask, num_items_in_batch=1000).components
    assert local.keys() == scaled.keys()
    for name in local:
        torch.testing.assert_close(scaled[name], local[name])


def test_zero_weights_are_dropped() -> None:
    objective = Objective(weights={"ce": 1.0, "lovasz": 0.0})
    assert objective.weights == {"ce": 1.0}
    logits, labels, answer_mask = chat_batch(seed=13)
    assert list(objective(logits, labels, answer_mask).components) == ["ce"]


# ---------------------------------------------------------------- spec parsing and mix()


@pytest.mark.parametrize(
    ("spec", "weights"),
    [
        ("ce=0.6,lovasz=0.4", {"ce": 0.6, "lovasz": 0.4}),
        (" CE = 0.6 , Lovasz-Softmax = 0.4 ", {"ce": 0.6, "lovasz": 0.4}),
        ("cross_entropy=1,generalized_dice=2", {"ce": 1.0, "gdice": 2.0}),
        ("focal_loss=0.5,self_adjusting_dice=0.5", {"focal": 0.5, "sadl": 0.5}),
        ("lovasz", {"lovasz": 1.0}),
        ("ce=0.6,,focal=0.4,", {"ce": 0.6, "focal": 0.4}),
        ("ce=1e-1,sadl=.9", {"ce": 0.1, "sadl": 0.9}),
        ("ce=0.6,ce@answer=0.4", {"ce": 0.6, "ce@answer": 0.4}),
        ("CE@Answer=1", {"ce@answer": 1.0}),
        ("ce@all=0.6,lovasz@answer=0.4", {"ce@all": 0.6, "lovasz": 0.4}),
        ("focal@all=1,dft=1", {"focal@all": 1.0, "dft": 1.0}),
    ],
)
def test_parse_loss_spec(spec: str, weights: dict[str, float]) -> None:
    assert parse_loss_spec(spec) == weights
    assert Objective.from_spec(spec).weights == weights


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ce=0.6,lovaz=0.4", r"unknown loss 'lovaz'; did you mean 'lovasz'\?"),
        ("ce=0.6,focall=0.4", r"unknown loss 'focall'; did you mean 'focal'\?"),
        ("dice=1", rf"unknown loss 'dice'.*\(known: {', '.join(loss_names())}\)"),
        ("ce@prompt=1", r"scope 'prompt' is not one of all, answer"),
        ("lovasz@all=1", r"set loss over the answer's tokens"),
        ("ce=0.5,ce@all=0.5", r"'ce' and 'ce@all' are the same term"),
        ("focal=0.5,focal@answer=0.5", r"'focal' appears twice"),
        ("ce=abc", r"weight of 'ce' is not a number: 'abc'"),
        ("ce=0.5,gdice", r"'gdice' has no weight; in a mixture every term needs one"),
        ("ce,lovasz", r"'ce' has no weight"),
        ("ce=0.5,cross_entropy=0.5", r"'ce' appears twice"),
        ("", r"names no loss"),
        (" , ", r"names no loss"),
    ],
)
def test_parse_loss_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Objective.from_spec(spec)


def test_spec_round_trips() -> None:
    objective = Objective.from_spec("ce=0.6, lovasz_softmax=0.4")
    assert objective.spec == "ce=0.6,lovasz=0.4"
    assert Objective.from_spec(objective.spec).weights == objective.weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"ce": -0.5, "focal": 1.0}, r"weight of 'ce' must be a finite number >= 0, got -0.5"),
        ({"ce": float("nan")}, r"weight of 'ce' must be a finite number >= 0"),
        ({"ce": 0.0, "lovasz": 0.0}, r"at least one loss weight must be positive"),
        ({"lovaz": 1.0}, r"did you mean 'lovasz'"),
    ],
)
def test_rejects_bad_weights(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Objective(weights=weights)


def test_rejects_a_loss_given_twice_under_an_alias() -> None:
    with pytest.raises(ValueError, match="twice"):
        Objective(weights={"ce": 0.6, "cross_entropy": 0.4})


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"ce_scope": "prompt"}, r"ce_scope='prompt' is not one of 'all', 'answer'"),
        ({"group": "flat"}, r"group='flat' is not one of 'batch', 'sequence'"),
        ({"gdice_weighting": "squared"}, r"gdice_weighting='squared' is not one of"),
        ({"gdice_absent": "zero"}, r"gdice_absent='zero' is not one of 'present', 'max', 'paper'"),
    ],
)
def test_rejects_unknown_options(option: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Objective(**option)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("loss", "lam", "weights"),
    [
        ("lovasz", 0.6, {"ce": 0.6, "lovasz": 0.4}),
        ("Generalized-Dice", 0.25, {"ce": 0.25, "gdice": 0.75}),
        ("focal", 1.0, {"ce": 1.0}),
        ("sadl", 0.0, {"sadl": 1.0}),
        ("ce", 0.3, {"ce": 1.0}),
    ],
)
def test_mix(loss: str, lam: float, weights: dict[str, float]) -> None:
    assert Objective.mix(loss, lam=lam).weights == pytest.approx(weights)


def test_mix_defaults_to_the_paper_lambda_and_forwards_options() -> None:
    objective = Objective.mix("gdice", ce_scope="answer", group="batch", gdice_absent="max")
    assert objective.weights == pytest.approx({"ce": 0.6, "gdice": 0.4})
    assert (objective.ce_scope, objective.group, objective.gdice_absent) == (
        "answer",
        "batch",
        "max",
    )


@pytest.mark.parametrize("lam", [-0.1, 1.5])
def test_mix_rejects_lambda_outside_unit_interval(lam: float) -> None:
    with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\]"):
        Objective.mix("lovasz", lam=lam)


# ---------------------------------------------------------------- normalisation


def test_num_items_none_gives_the_local_weighted_mean() -> None:
    logits, labels, answer_mask = chat_batch(seed=14)
    objective = Objective.from_spec("ce=0.7,sadl=0.3")
    targets = next_token_targets(labels)
    expected = 0.7 * cross_entropy_loss(logits[:, :-1], targets) + 0.3 * self_adjusting_dice_loss(
        logits[:, :-1], next_token_targets(labels, answer_mask)
    )
    torch.testing.assert_close(objective(logits, labels, answer_mask).loss, expected)


@pytest.mark.parametrize("num_items", [13, 13.0, torch.tensor(13)], ids=["int", "float", "tensor"])
def test_ce_with_num_items_is_sum_over_num_items(num_items: object) -> None:
    """The transformers compute_loss_func contract: sum over local tokens / num_items_in_batch."""
    logits, labels, _ = chat_batch(seed=15)
    loss = Objective()(logits, labels, num_items_in_batch=num_items).loss
    total = F.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), next_token_targets(labels).reshape(-1), reduction="sum"
    )
    torch.testing.assert_close(loss, total / 13)


def test_answer_terms_with_a_label_count_are_scaled_by_the_label_share() -> None:
    """With only num_items_in_batch (labels), an answer term is its local mean times the local
    share of label tokens: exact accumulation needs ItemCounts when answer shares differ."""
    logits, labels, answer_mask = chat_batch(seed=16)
    n_labels, _ = window_counts(labels, answer_mask)
    out = Objective.from_spec("focal")(logits, labels, answer_mask, num_items_in_batch=50)
    torch.testing.assert_close(out.loss, out.components["focal"] * n_labels / 50)


def test_item_counts_scale_each_term_by_its_own_share() -> None:
    logits, labels, answer_mask = chat_batch(seed=17)
    n_labels, n_answer = window_counts(labels, answer_mask)
    counts = ItemCounts(labels=40, answer=25)
    out = Objective.from_spec("ce=0.6,lovasz=0.4")(logits, labels, answer_mask, counts)
    expected = (
        0.6 * out.components["ce"] * n_labels / 40 + 0.4 * out.components["lovasz"] * n_answer / 25
    )
    torch.testing.assert_close(out.loss, expected)


def accumulated_loss_and_grad(
    objective: Objective,
    logits: Tensor,
    labels: Tensor,
    answer_mask: Tensor | None,
    num_items: object,
) -> tuple[Tensor, Tensor]:
    """Two micro-batches (first and second half of the rows), summed as a Trainer does."""
    leaf = logits.clone().requires_grad_(True)
    half = labels.shape[0] // 2
    total = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, half), slice(half, None)):
        mask = None if answer_mask is None else answer_mask[rows]
        total = total + objective(leaf[rows], labels[rows], mask, num_items).loss
    total.backward()
    assert leaf.grad is not None
    return total.detach(), leaf.grad


TOKEN_MEAN_SPECS = [
    "ce",
    "focal",
    "sadl",
    "dft",
    "ce=0.5,focal=0.3,sadl=0.2",
    "ce@all=0.6,ce@answer=0.4",  # the same under either ce_scope
    "ce@answer=0.3,focal@all=0.3,dft=0.4",
    "eaft=0.5,prob(k=2)@all=0.5",
]
# float64 losses agree to float64 precision: a micro-batch's share of the window is divided in the
# loss's dtype (integer counts divided would round it to float32, ~1e-9 apart).
FLOAT64 = {"rtol": 1e-12, "atol": 1e-14}


@pytest.mark.parametrize("spec", TOKEN_MEAN_SPECS)
@pytest.mark.parametrize("ce_scope", ["all", "answer"])
def test_gradient_accumulation_with_num_items_matches_one_full_batch(
    spec: str, ce_scope: str
) -> None:
    """Answer = supervised labels (completion-only data): the label count is all that is needed."""
    logits, labels, _ = chat_batch(seed=18, batch=6)
    objective = Objective.from_spec(spec, ce_scope=ce_scope)
    n_labels = int((next_token_targets(labels) != IGNORE).sum())
    loss, grad = accumulated_loss_and_grad(objective, logits, labels, None, n_labels)
    full_loss, full_grad = loss_and_grad(objective_loss(objective, None, n_labels), logits, labels)
    torch.testing.assert_close(loss, full_loss, **FLOAT64)
    torch.testing.assert_close(grad, full_grad, **FLOAT64)
    local_mean, _ = loss_and_grad(objective_loss(objective), logits, labels)
    torch.testing.assert_close(full_loss, local_mean)


@pytest.mark.parametrize("spec", TOKEN_MEAN_SPECS)
@pytest.mark.parametrize("ce_scope", ["all", "answer"])
def test_gradient_accumulation_with_item_counts_matches_one_full_batch(
    spec: str, ce_scope: str
) -> None:
    """Prompt + answer data whose halves have different answer shares."""
    logits, labels, answer_mask = chat_batch(seed=19, batch=6)
    counts = ItemCounts(*window_counts(labels, answer_mask))
    halves = [window_counts(labels[rows], answer_mask[rows]) for rows in (slice(0, 3), slice(3, 6))]
    assert halves[0][1] / halves[0][0] != halves[1][1] / halves[1][0]
    objective = Objective.from_spec(spec, ce_scope=ce_scope)
    loss, grad = accumulated_loss_and_grad(objective, logits, labels, answer_mask, counts)
    full_loss, full_grad = loss_and_grad(objective_loss(objective, answer_mask), logits, labels)
    torch.testing.assert_close(loss, full_loss, **FLOAT64)
    torch.testing.assert_close(grad, full_grad, **FLOAT64)


@pytest.mark.parametrize("num_items", [None, 20, ItemCounts(labels=20, answer=5)])
@pytest.mark.parametrize("spec", ["lovasz", "ce=0.6,gdice=0.4", "focal=0.5,sadl=0.5"])
def test_micro_batch_without_answer_tokens_stays_connected(spec: str, num_items: object) -> None:
    """DDP needs a graph even when a micro-batch has nothing to learn from (docs/training.md)."""
    logits, labels, _ = chat_batch(seed=20)
    no_answer = torch.zeros_like(labels, dtype=torch.bool)
    leaf = logits.clone().requires_grad_(True)
    out = Objective.from_spec(spec)(leaf, labels, no_answer, num_items)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    for name in out.components.keys() - {"ce"}:
        assert out.components[name].item() == 0.0
    out.loss.backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    if "ce" in spec:
        ce_only = objective_loss(Objective(weights={"ce": 0.6}), no_answer, num_items)
        expected_loss, expected_grad = loss_and_grad(ce_only, logits, labels)
        torch.testing.assert_close(out.loss.detach(), expected_loss)
        torch.testing.assert_close(leaf.grad, expected_grad)
    else:
        assert out.loss.item() == 0.0
        assert torch.equal(leaf.grad, torch.zeros_like(leaf))


@pytest.mark.parametrize(
    ("labels_ignored", "num_items"),
    [(False, ItemCounts(labels=30, answer=0)), (True, 0), (True, ItemCounts(labels=0, answer=0))],
    ids=["no-answer-in-window", "no-label-in-window", "nothing-in-window"],
)
def test_window_without_tokens_gives_a_finite_loss(labels_ignored: bool, num_items: object) -> None:
    """E.g. every answer of the window truncated away: the terms with nothing to average over
    contribute 0, the others their usual share."""
    logits, labels, _ = chat_batch(seed=26)
    if labels_ignored:
        labels = torch.full_like(labels, IGNORE)
    no_answer = torch.zeros_like(labels, dtype=torch.bool)
    out = Objective.from_spec("ce=0.6,focal=0.4")(logits, labels, no_answer, num_items)
    n_labels = int((next_token_targets(labels) != IGNORE).sum())
    expected = 0.6 * out.components["ce"] * n_labels / 30 if n_labels else 0.0
    assert out.loss.item() == pytest.approx(float(expected))


def test_micro_batch_without_labels_stays_connected() -> None:
    logits = torch.full((2, 4, VOCAB), float("nan"), requires_grad=True)
    labels = torch.full((2, 4), IGNORE)
    out = Objective.from_spec("ce=0.6,lovasz=0.4")(logits, labels, None, 17)
    assert out.loss.item() == 0.0 and out.loss.dtype == torch.float32
    assert all(value.item() == 0.0 for value in out.components.values())
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---------------------------------------------------------------- dtypes and bad input


@pytest.mark.parametrize("spec", ["ce", "ce=0.6,lovasz=0.4", "focal=0.5,gdice=0.5"])
def test_half_precision_is_computed_in_float32(half_dtype: torch.dtype, spec: str) -> None:
    logits, labels, answer_mask = chat_batch(seed=21)
    half = logits.to(half_dtype)
    objective = Objective.from_spec(spec)
    loss, grad = loss_and_grad(objective_loss(objective, answer_mask), half, labels)
    float_loss, float_grad = loss_and_grad(
        objective_loss(objective, answer_mask), half.float(), labels
    )
    assert loss.dtype == torch.float32 and grad.dtype == half_dtype
    torch.testing.assert_close(loss, float_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, float_grad.to(half_dtype))


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "message"),
    [
        ((8, VOCAB), (8,), r"expected logits \[B, T, V\] and labels \[B, T\]; got \(8, 9\)"),
        ((2, 8, VOCAB), (2, 7), r"got \(2, 8, 9\) and \(2, 7\)"),
        ((2, 8, VOCAB), (2, 8, 1), r"labels \[B, T\]"),
    ],
)
def test_rejects_bad_shapes(
    logits_shape: tuple[int, ...], labels_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Objective()(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


def test_rejects_answer_mask_of_another_shape() -> None:
    logits, labels, answer_mask = chat_batch(seed=22)
    with pytest.raises(ValueError, match=r"answer_mask shape \(4, 7\) must equal labels shape"):
        Objective()(logits, labels, answer_mask[:, 1:])


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_rejects_out_of_range_labels(bad: int) -> None:
    logits, labels, answer_mask = chat_batch(seed=23)
    labels[1, 2] = bad
    with pytest.raises(ValueError, match=rf"in \[0, {VOCAB}\) or equal ignore_index=-100"):
        Objective.from_spec("ce=0.5,lovasz=0.5")(logits, labels, answer_mask)


def test_custom_ignore_index() -> None:
    logits, labels, answer_mask = chat_batch(seed=24)
    relabelled = labels.masked_fill(labels == IGNORE, -1)
    objective = Objective.from_spec("ce=0.5,lovasz=0.5")
    expected = objective(logits, labels, answer_mask).loss
    custom = Objective.from_spec("ce=0.5,lovasz=0.5", ignore_index=-1)
    torch.testing.assert_close(custom(logits, relabelled, answer_mask).loss, expected)


def test_sequence_grouped_set_losses_do_not_depend_on_the_micro_batch_split() -> None:
    """With sequence counts over the window, one batch of 4 equals 4 micro-batches of 1."""
    torch.manual_seed(3)
    logits = torch.randn(4, 7, 13, dtype=torch.float64)
    labels = torch.randint(0, 13, (4, 7))
    labels[1, :3] = -100
    answer_mask = torch.zeros(4, 7, dtype=torch.bool)
    answer_mask[:, 4:] = True
    answer_mask[2, 2:] = True  # examples differ in their answer lengths
    objective = Objective.from_spec("ce=0.5,lovasz=0.3,gdice=0.2", group="sequence")

    def counts(rows: slice) -> ItemCounts:
        supervised = labels[rows, 1:] != -100
        answer = supervised & answer_mask[rows, 1:]
        return ItemCounts(supervised.sum(), answer.sum(), answer.any(dim=1).sum())

    full = logits.clone().requires_grad_()
    objective(full, labels, answer_mask, counts(slice(None))).loss.backward()
    split = logits.clone().requires_grad_()
    window = counts(slice(None))
    for row in range(4):
        part = slice(row, row + 1)
        objective(split[part], labels[part], answer_mask[part], window).loss.backward()
    torch.testing.assert_close(split.grad, full.grad)
