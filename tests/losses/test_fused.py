"""The fused output layer + objective against the materialised path ``objective(h @ W.T, ...)``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from seglm.losses import ItemCounts, Objective, ObjectiveOutput
from seglm.losses.fused import (
    CHUNK_VALUES,
    ROW_TILE,
    default_chunk_size,
    fused_objective_loss,
)

from ._helpers import IGNORE

SPECS = [
    "ce",
    "focal",
    "sadl",
    "gdice",
    "lovasz",
    "ce=0.6,gdice=0.4",
    "ce=0.6,lovasz=0.4",
    "ce=0.3,focal=0.2,sadl=0.1,gdice=0.2,lovasz=0.2",
    "dft",
    # Terms of both scopes in one objective: the weighting control and per-token terms over
    # every supervised token.
    "ce=0.6,ce@answer=0.4",
    "ce@answer=0.5,focal@all=0.2,dft@all=0.1,lovasz=0.2",
]
# 19 used rows (sequences of 5, 7, 0 and 7; answers of 3, 5, 0 and 5): chunks of one row,
# smaller than a group, about a sequence, and larger than all rows.
CHUNKS = [1, 3, 7, 1000]


@dataclass
class Batch:
    hidden: Tensor  # [B, T, H]
    weight: Tensor  # [V, H]
    bias: Tensor  # [V]
    labels: Tensor  # [B, T], unshifted
    answer_mask: Tensor | None  # [B, T]


def make_batch(dtype: torch.dtype = torch.float64, vocab: int = 50, seed: int = 0) -> Batch:
    """Four sequences of 8 tokens; labels drawn from 12 classes so that the set losses' groups
    repeat classes; prompt positions, a padded tail and an all-ignored sequence."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, size = 4, 8, 6
    hidden = torch.randn(batch, length, size, generator=generator, dtype=torch.float64)
    weight = torch.randn(vocab, size, generator=generator, dtype=torch.float64)
    bias = torch.randn(vocab, generator=generator, dtype=torch.float64)
    labels = torch.randint(12, (batch, length), generator=generator)
    labels[0, 6:] = IGNORE  # padding
    labels[2] = IGNORE  # a sequence with nothing to learn from
    answer_mask = torch.zeros(batch, length, dtype=torch.bool)
    answer_mask[:, 3:] = True  # prompt: the first three tokens
    return Batch(hidden.to(dtype), weight.to(dtype), bias.to(dtype), labels, answer_mask)


@dataclass
class Result:
    output: ObjectiveOutput
    grads: dict[str, Tensor | None]


def run(
    objective: Objective,
    batch: Batch,
    *,
    fused: bool,
    chunk_size: int | None = None,
    train_weight: bool = True,
    use_bias: bool = True,
    num_items: int | ItemCounts | None = None,
) -> Result:
    hidden = batch.hidden.clone().requires_grad_()
    weight = batch.weight.clone().requires_grad_(train_weight)
    bias = batch.bias.clone().requires_grad_(train_weight) if use_bias else None
    if fused:
        output = fused_objective_loss(
            objective, hidden, weight, batch.labels, batch.answer_mask, num_items, bias, chunk_size
        )
    else:
        output = objective(
            F.linear(hidden, weight, bias), batch.labels, batch.answer_mask, num_items
        )
    output.loss.backward()
    grads = {"hidden": hidden.grad, "weight": weight.grad}
    if bias is not None:
        grads["bias"] = bias.grad
    return Result(output, grads)


def assert_same(fused: Result, expected: Result, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    torch.testing.assert_close(fused.output.loss, expected.output.loss, rtol=rtol, atol=atol)
    assert fused.output.components.keys() == expected.output.components.keys()
    for name, value in expected.output.components.items():
        torch.testing.assert_close(fused.output.components[name], value, rtol=rtol, atol=atol)
    assert fused.grads.keys() == expected.grads.keys()
    for name, grad in expected.grads.items():
        if grad is None:
            assert fused.grads[name] is None, name
        else:
            torch.testing.assert_close(fused.grads[name], grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("spec", SPECS)
def test_matches_materialised_path(spec: str, group: str, chunk_size: int) -> None:
    objective = Objective.from_spec(spec, group=group)
    batch = make_batch()
    expected = run(objective, batch, fused=False)
    assert expected.output.loss > 0  # a test that cannot pass by comparing zeros
    assert_same(run(objective, batch, fused=True, chunk_size=chunk_size), expected)


@pytest.mark.parametrize(
    "settings",
    [
        {"gdice_absent": "max"},
        {"gdice_absent": "paper", "gdice_weighting": "simple"},
        {"gdice_weighting": "uniform", "gdice_smooth": 1.0},
        {"ce_scope": "answer"},
        {"focal_gamma": 0.5, "sadl_alpha": 0.0, "sadl_gamma": 0.3},
    ],
    ids=str,
)
def test_matches_materialised_path_with_settings(settings: dict[str, object], group: str) -> None:
    spec = "ce=0.2,focal=0.2,sadl=0.2,gdice=0.2,lovasz=0.2"
    objective = Objective.from_spec(spec, group=group, **settings)
    batch = make_batch(seed=1)
    assert_same(run(objective, batch, fused=True, chunk_size=3), run(objective, batch, fused=False))


@pytest.mark.parametrize(
    "num_items", [10, ItemCounts(labels=40, answer=25)], ids=["labels", "item-counts"]
)
def test_normalisation_matches_materialised_path(num_items: int | ItemCounts) -> None:
    objective = Objective.from_spec("ce=0.5,focal=0.2,lovasz=0.3")
    batch = make_batch(seed=2)
    expected = run(objective, batch, fused=False, num_items=num_items)
    assert_same(run(objective, batch, fused=True, chunk_size=4, num_items=num_items), expected)


def test_without_answer_mask_and_without_bias() -> None:
    objective = Objective.from_spec("ce=0.6,gdice=0.4")
    batch = make_batch(seed=3)
    batch.answer_mask = None
    expected = run(objective, batch, fused=False, use_bias=False)
    fused = run(objective, batch, fused=True, chunk_size=5, use_bias=False)
    assert_same(fused, expected)


@pytest.mark.parametrize("spec", ["ce=0.6,focal=0.4", "ce=0.6,lovasz=0.4"])
def test_float32(spec: str) -> None:
    objective = Objective.from_spec(spec)
    batch = make_batch(torch.float32, vocab=300)
    fused = run(objective, batch, fused=True, chunk_size=6)
    assert fused.output.loss.dtype == torch.float32
    assert_same(fused, run(objective, batch, fused=False), rtol=1e-5, atol=1e-6)


def assert_same_up_to_bfloat16(fused: Result, expected: Result, grad_dtype: torch.dtype) -> None:
    """Same loss (both softmaxes are float32 on the same bf16-rounded logits); gradients equal up
    to bf16 rounding, since the fused weight gradient sums its chunks in float32."""
    assert fused.output.loss.dtype == torch.float32
    torch.testing.assert_close(fused.output.loss, expected.output.loss, rtol=1e-6, atol=1e-6)
    for name, grad in expected.grads.items():
        if grad is None:
            assert fused.grads[name] is None
        else:
            assert fused.grads[name] is not None and fused.grads[name].dtype == grad_dtype
            scale = grad.abs().max().item()
            torch.testing.assert_close(fused.grads[name], grad, rtol=2e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("train_weight", [True, False], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("spec", ["ce=0.6,focal=0.4", "ce=0.6,gdice=0.2,lovasz=0.2"])
def test_bfloat16(spec: str, train_weight: bool) -> None:
    """bf16 hidden and weight: logits rounded to bf16 as the model's head rounds them."""
    objective = Objective.from_spec(spec)
    batch = make_batch(torch.bfloat16, vocab=300)
    fused = run(objective, batch, fused=True, chunk_size=5, train_weight=train_weight)
    expected = run(objective, batch, fused=False, train_weight=train_weight)
    assert_same_up_to_bfloat16(fused, expected, torch.bfloat16)


@pytest.mark.parametrize("spec", ["ce=0.6,sadl=0.4", "ce=0.6,lovasz=0.4"])
def test_autocast(spec: str) -> None:
    """Under autocast the head's matmul runs in bf16, as F.linear would under autocast."""
    objective = Objective.from_spec(spec)
    batch = make_batch(torch.float32, vocab=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = run(objective, batch, fused=True, chunk_size=5)
        expected = run(objective, batch, fused=False)
    float32 = run(objective, batch, fused=False)
    assert abs(float32.output.loss.item() - expected.output.loss.item()) > 1e-6  # bf16 showed
    assert_same_up_to_bfloat16(fused, expected, torch.float32)


def gradients_of_half_logits(
    objective: Objective,
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    num_items: int,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """``scale`` times the gradients of hidden and weight, in float64, of the objective of the
    logits as a half-precision head rounds them (the rounding the fused path also sees)."""
    logits = F.linear(hidden, weight).double().requires_grad_()
    objective(logits, labels, num_items_in_batch=num_items).loss.backward()
    dlogits = logits.grad.reshape(-1, weight.shape[0]) * scale
    return dlogits @ weight.double(), dlogits.T @ hidden.double().reshape(-1, weight.shape[1])


@pytest.mark.parametrize("train_weight", [True, False], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("spec", ["ce=0.6,focal=0.4", "ce=0.6,lovasz=0.4"])
def test_float16_gradients_are_kept_until_the_loss_scale_lifts_them(
    spec: str, train_weight: bool
) -> None:
    """fp16 training multiplies the loss's gradient by GradScaler's scale (65536 at first) in
    the backward. With 65536 tokens in the accumulation window a row's logit gradient is about
    1e-5 times its probabilities: rounded to fp16 before the scale, its small entries flush to
    zero and the rest lose digits. Scaled, they are the float64 gradients up to fp16 rounding."""
    objective = Objective.from_spec(spec)
    generator = torch.Generator().manual_seed(12)
    hidden = torch.randn(4, 64, 32, generator=generator).half()
    weight = (torch.randn(1000, 32, generator=generator) * 0.5).half()
    labels = torch.randint(1000, (4, 64), generator=generator)
    scale, num_items = 65536.0, 65536
    hidden.requires_grad_()
    weight.requires_grad_(train_weight)
    output = fused_objective_loss(
        objective, hidden, weight, labels, num_items_in_batch=num_items, chunk_size=50
    )
    output.loss.backward(torch.tensor(scale))
    expected = gradients_of_half_logits(
        objective, hidden.detach(), weight.detach(), labels, num_items, scale
    )
    got = [hidden.grad.reshape(-1, 32), weight.grad]
    for name, grad, reference in zip(("hidden", "weight"), got, expected, strict=True):
        if name == "weight" and not train_weight:
            assert grad is None
            continue
        assert grad is not None and grad.dtype == torch.float16
        error = (grad.double() - reference).norm() / reference.norm()
        assert error < 1e-3, (name, error)  # fp16 rounding: ~5e-4; rounded before: ~2e-2
        representable = reference.abs() >= 2**-24  # fp16's smallest subnormal
        assert not (grad[representable] == 0).any(), name


def test_bfloat16_weight_gradient_is_rounded_once() -> None:
    """Each chunk's product is added in float32: the bf16 weight gradient is the float64 one
    rounded to bf16 (up to ties), not a sum of products each rounded to bf16 first."""
    objective = Objective.from_spec("ce")
    generator = torch.Generator().manual_seed(13)
    hidden = torch.randn(4, 64, 32, generator=generator).bfloat16()
    weight = (torch.randn(300, 32, generator=generator) * 0.3).bfloat16().requires_grad_()
    labels = torch.randint(300, (4, 64), generator=generator)
    fused_objective_loss(objective, hidden, weight, labels, chunk_size=8).loss.backward()
    _, expected = gradients_of_half_logits(
        objective, hidden, weight.detach(), labels, hidden.shape[0] * 63, 1.0
    )
    assert weight.grad is not None
    same = (weight.grad == expected.bfloat16()).double().mean().item()
    assert same > 0.99  # each chunk rounded first: 0.62


def lora_blocks(batch: Batch, rank: int = 3, seed: int = 14) -> tuple[Tensor, Tensor]:
    """LoRA's ``[B, T, r]`` down-projected hidden states and ``[V, r]`` up-projection."""
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, batch.hidden.shape[-1], generator=generator, dtype=torch.float64)
    up = torch.randn(batch.weight.shape[0], rank, generator=generator, dtype=torch.float64)
    return batch.hidden @ down.T, up


class ProductShapes(TorchDispatchMode):
    """Records the output shape of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("mm", "addmm", "addmm_"):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("spec", ["ce=0.6,focal=0.4", "ce=0.6,gdice=0.2,lovasz=0.2"])
def test_column_blocks_train_only_what_requires_a_gradient(spec: str) -> None:
    """A frozen weight and a LoRA up-projection as two blocks: the same loss and gradients as
    the concatenated head, and none for the frozen block: no product gives a [V, H] gradient
    (only the up block's [V, r] one, once per chunk)."""
    objective = Objective.from_spec(spec)
    batch = make_batch(seed=14, vocab=53)
    low, up = lora_blocks(batch)
    expected_leaves = [batch.hidden.clone().requires_grad_(), low.clone().requires_grad_()]
    expected_up = up.clone().requires_grad_()
    logits = F.linear(torch.cat(expected_leaves, -1), torch.cat([batch.weight, expected_up], -1))
    expected = objective(logits, batch.labels, batch.answer_mask)
    expected.loss.backward()

    leaves = [batch.hidden.clone().requires_grad_(), low.clone().requires_grad_()]
    weight, trained_up = batch.weight.clone(), up.clone().requires_grad_()
    with ProductShapes() as probe:
        output = fused_objective_loss(
            objective, leaves, [weight, trained_up], batch.labels, batch.answer_mask, chunk_size=5
        )
        output.loss.backward()
    torch.testing.assert_close(output.loss, expected.loss, rtol=1e-10, atol=1e-12)
    for got, reference in zip([*leaves, trained_up], [*expected_leaves, expected_up], strict=True):
        assert reference.grad is not None and reference.grad.abs().max() > 0
        torch.testing.assert_close(got.grad, reference.grad, rtol=1e-10, atol=1e-12)
    assert weight.grad is None
    vocab_rows = [shape for shape in probe.shapes if shape[0] == 53]
    assert vocab_rows == [tuple(up.shape)] * 4  # 19 used rows in chunks of 5


def test_frozen_head_gets_no_gradient() -> None:
    objective = Objective.from_spec("ce=0.6,lovasz=0.4")
    batch = make_batch(seed=4)
    fused = run(objective, batch, fused=True, chunk_size=4, train_weight=False)
    assert_same(fused, run(objective, batch, fused=False, train_weight=False))


@pytest.mark.parametrize("spec", ["ce=0.6,sadl=0.4", "ce=0.6,gdice=0.4"])
def test_lora_like_adapter_under_a_frozen_head(spec: str) -> None:
    """hidden = base + x A^T B^T with only A and B trained, as LoRA on the last layer."""
    objective = Objective.from_spec(spec)
    batch = make_batch(seed=5)
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(*batch.hidden.shape, generator=generator, dtype=torch.float64)
    grads = []
    for fused in (False, True):
        down = torch.randn(2, 6, generator=generator.manual_seed(6), dtype=torch.float64)
        up = torch.randn(6, 2, generator=generator.manual_seed(7), dtype=torch.float64)
        down.requires_grad_()
        up.requires_grad_()
        hidden = batch.hidden + inputs @ down.T @ up.T
        if fused:
            output = fused_objective_loss(
                objective, hidden, batch.weight, batch.labels, batch.answer_mask, chunk_size=3
            )
        else:
            output = objective(hidden @ batch.weight.T, batch.labels, batch.answer_mask)
        output.loss.backward()
        grads.append((down.grad, up.grad))
    (expected_down, expected_up), (down_grad, up_grad) = grads
    assert expected_down.abs().max() > 0
    torch.testing.assert_close(down_grad, expected_down, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(up_grad, expected_up, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", ["lovasz", "focal=0.5,gdice=0.5"])
def test_no_answer_token_gives_a_connected_zero(spec: str) -> None:
    """No row to learn from: 0, still attached to hidden and weight (DDP needs the graph)."""
    objective = Objective.from_spec(spec)
    batch = make_batch(seed=6)
    batch.answer_mask = torch.zeros_like(batch.labels, dtype=torch.bool)
    fused = run(objective, batch, fused=True)
    assert fused.output.loss.item() == 0.0
    assert all(value.item() == 0.0 for value in fused.output.components.values())
    for name, grad in fused.grads.items():
        assert grad is not None and torch.equal(grad, torch.zeros_like(grad)), name


def test_no_answer_token_keeps_the_ce_term() -> None:
    objective = Objective.from_spec("ce=0.6,lovasz=0.4")
    batch = make_batch(seed=7)
    batch.answer_mask = torch.zeros_like(batch.labels, dtype=torch.bool)
    fused = run(objective, batch, fused=True, chunk_size=2)
    assert fused.output.components["lovasz"].item() == 0.0
    assert_same(fused, run(objective, batch, fused=False))


def test_ignored_positions_are_never_projected() -> None:
    """NaN hidden states where no term applies change nothing, and get a zero gradient."""
    objective = Objective.from_spec("ce=0.5,focal=0.2,lovasz=0.3")
    batch = make_batch(seed=8)
    expected = run(objective, batch, fused=True, chunk_size=3)
    unused = F.pad(batch.labels, (0, 1), value=IGNORE)[:, 1:] == IGNORE
    batch.hidden[unused] = float("nan")
    poisoned = run(objective, batch, fused=True, chunk_size=3)
    assert_same(poisoned, expected, rtol=0, atol=0)
    hidden_grad = poisoned.grads["hidden"]
    assert hidden_grad is not None and torch.equal(
        hidden_grad[unused], torch.zeros_like(hidden_grad[unused])
    )


def test_no_grad_mode_gives_the_value_only() -> None:
    objective = Objective.from_spec("ce=0.6,lovasz=0.4")
    batch = make_batch(seed=9)
    weight = batch.weight.clone().requires_grad_()
    with torch.no_grad():
        output = fused_objective_loss(
            objective, batch.hidden, weight, batch.labels, batch.answer_mask, chunk_size=3
        )
    assert not output.loss.requires_grad
    expected = objective(batch.hidden @ batch.weight.T, batch.labels, batch.answer_mask)
    torch.testing.assert_close(output.loss, expected.loss, rtol=1e-10, atol=1e-12)


def test_second_backward_is_refused() -> None:
    batch = make_batch(seed=10)
    hidden = batch.hidden.clone().requires_grad_()
    output = fused_objective_loss(Objective(), hidden, batch.weight, batch.labels)
    output.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        output.loss.backward()


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("spec", ["ce=0.6,focal=0.4", "ce=0.6,gdice=0.2,lovasz=0.2"])
def test_never_holds_more_than_a_chunk_of_logits(spec: str) -> None:
    objective = Objective.from_spec(spec)
    batch = make_batch(seed=11, vocab=500)
    batch.hidden = batch.hidden[:, :, :2].contiguous()  # H = 2: the weight is small next to V
    batch.weight = batch.weight[:, :2].contiguous()
    rows = 19
    vocab, size = batch.weight.shape
    for fused, bound in ((True, 3 * vocab), (False, None)):
        with LargestTensor() as probe:
            run(objective, batch, fused=fused, chunk_size=3)
        if bound is None:  # the probe sees the materialised path's logits
            assert probe.largest >= rows * vocab
        else:
            assert probe.largest <= max(bound, vocab * size)


def test_default_chunk_size_bounds_the_logits_in_whole_tiles() -> None:
    rows = default_chunk_size(151936)  # 441 rows fit; 384 = 3 x 128 is the chunk
    assert rows == 384 and rows % ROW_TILE == 0
    assert rows * 151936 <= CHUNK_VALUES < (rows + ROW_TILE) * 151936
    assert default_chunk_size(CHUNK_VALUES // 100) == 100  # fewer rows than a tile fit
    assert default_chunk_size(CHUNK_VALUES * 2) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden": torch.zeros(4, 6)}, r"expected hidden \[B, T, H\] and labels \[B, T\]"),
        ({"weight": torch.zeros(50, 5)}, r"weight must be \[V, H\] with H = 6"),
        ({"bias": torch.zeros(49)}, r"bias must be \[V\] = \[50\], got \(49,\)"),
        ({"answer_mask": torch.ones(4, 7, dtype=torch.bool)}, r"answer_mask shape \(4, 7\)"),
        ({"labels": torch.full((4, 8), 50)}, r"targets must be in \[0, 50\)"),
        ({"chunk_size": 0}, r"chunk_size must be >= 1, got 0"),
    ],
    ids=["hidden", "weight", "bias", "answer-mask", "labels", "chunk"],
)
def test_rejects_bad_input(change: dict[str, object], message: str) -> None:
    batch = make_batch(torch.float32)
    arguments: dict[str, object] = {
        "hidden": batch.hidden,
        "weight": batch.weight,
        "labels": batch.labels,
        "answer_mask": batch.answer_mask,
        "bias": batch.bias,
        "chunk_size": None,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        fused_objective_loss(Objective(), **arguments)  # type: ignore[arg-type]


class VocabMatmuls(TorchDispatchMode):
    """Counts the matrix products with an operand as wide as the vocabulary (the head's work;
    the set losses' small products over present classes do not count)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in ("mm", "addmm", "addmm_"):
            shapes = [a.shape for a in args if isinstance(a, Tensor)]
            self.count += any(self.vocab in shape for shape in shapes)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("spec", "mode", "per_chunk"),
    [
        # One pass: logits, then the gradients of hidden and (trained head) of the weight.
        ("ce=0.6,sadl=0.4", "trained", 3),
        ("ce=0.6,sadl=0.4", "frozen", 2),
        ("ce=0.6,sadl=0.4", "no_grad", 1),
        # Two passes: logits and softmax @ W, then (trained head only) logits again and dW.
        ("ce=0.6,lovasz=0.4", "trained", 4),
        ("ce=0.6,lovasz=0.4", "frozen", 2),
        ("ce=0.6,lovasz=0.4", "no_grad", 1),
    ],
)
def test_head_matmuls_per_chunk(spec: str, mode: str, per_chunk: int) -> None:
    batch = make_batch(seed=4, vocab=53)  # 53: no other dimension of the batch has this size
    hidden = batch.hidden.clone().requires_grad_(mode != "no_grad")
    weight = batch.weight.clone().requires_grad_(mode == "trained")
    with VocabMatmuls(vocab=53) as probe, torch.set_grad_enabled(mode != "no_grad"):
        output = fused_objective_loss(
            Objective.from_spec(spec), hidden, weight, batch.labels, batch.answer_mask, chunk_size=5
        )
        if mode != "no_grad":
            output.loss.backward()
    assert probe.count == per_chunk * 4  # 19 used rows in chunks of 5
