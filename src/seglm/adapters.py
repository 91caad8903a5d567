"""What gets trained: LoRA (PEFT), QLoRA (4-bit base through bitsandbytes, CUDA only) or the full
model.

LoRA targets every linear layer of the transformer blocks by default (PEFT's ``all-linear``: the
attention and MLP projections of any architecture, never the output head), which is the paper's
setting; ``target_modules`` names them explicitly instead.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from seglm.config import ConfigError, TrainConfig
from seglm.models import load_model, resolve_dtype

ALL_LINEAR = "all-linear"


def check_adapter_available(adapter: str) -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes: say so before anything is loaded."""
    if adapter != "qlora":
        return
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if missing:
        raise ConfigError(
            f"adapter 'qlora' needs {' and '.join(missing)}; use adapter 'lora' on this machine"
        )


def base_dtype(config: TrainConfig) -> str:
    """Frozen base weights may live in the autocast dtype; fully trained weights stay float32
    (the optimiser's master copy) and autocast does the low-precision maths."""
    return "fp32" if config.adapter == "full" else resolve_dtype(config.dtype)


def load_base_model(config: TrainConfig, device_index: int = 0) -> Any:
    """The pretrained model, quantised to 4 bits for QLoRA."""
    if config.adapter != "qlora":
        return load_model(
            config.model, dtype=base_dtype(config), trust_remote_code=config.trust_remote_code
        )
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if resolve_dtype(config.dtype) == "bf16" else torch.float16
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    model = load_model(
        config.model,
        dtype=base_dtype(config),
        trust_remote_code=config.trust_remote_code,
        quantization_config=quantization,
        device_map={"": device_index},
    )
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def add_adapter(model: Any, config: TrainConfig) -> Any:
    """Wrap ``model`` in LoRA (for lora and qlora); full fine-tuning trains it as it is."""
    if config.adapter == "full":
        return model
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, config.target_modules)
    check_rank(model, config.lora_r, config.target_modules)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules or ALL_LINEAR,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as error:
        raise ConfigError(f"field 'target_modules': {error}") from None
    problem = fsdp_adapter_problem(wrapped)
    if problem:
        raise ConfigError(problem)
    # Saved adapters name their base portably: the hub id of a packaged model, not this
    # machine's cache folder it was loaded from.
    wrapped.peft_config["default"].base_model_name_or_path = portable_model_name(config.model)
    return wrapped


def portable_model_name(model: str) -> str:
    """How another machine finds ``model``: a packaged alias's hub id (seglm trained on its
    GGUF's dequantised weights, docs/training.md), a hub id or a folder as given."""
    from seglm.models import ALIASES

    alias = ALIASES.get(model.lower())
    return alias.hub_id if alias is not None else model


def fsdp_adapter_problem(model: Any) -> str | None:
    """LoRA on an output layer tied to the input embedding cannot go through accelerate's
    FSDP2 with ``fsdp_cpu_ram_efficient_loading``: accelerate re-ties the weights with
    ``model.tie_weights()``, which sets ``lm_head.weight`` on the PEFT layer and fails with
    ``KeyError: "attribute 'weight' already exists"`` (accelerate 1.16, peft 0.21,
    transformers 5.24; with the fused head or without)."""
    import os

    def enabled(variable: str) -> bool:
        return os.environ.get(variable, "false").lower() in ("1", "true")

    if not (
        enabled("ACCELERATE_USE_FSDP")
        and os.environ.get("FSDP_VERSION", "1") == "2"
        and enabled("FSDP_CPU_RAM_EFFICIENT_LOADING")
    ):
        return None
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head, embedding = owner.get_output_embeddings(), owner.get_input_embeddings()
    if head is None or embedding is None or not hasattr(head, "base_layer"):
        return None  # no LoRA on the output layer
    if head.base_layer.weight is not embedding.weight:
        return None
    return (
        "LoRA on the output layer of a model whose output layer is tied to its input embedding "
        "(tie_word_embeddings) cannot be sharded by accelerate's FSDP2 with "
        "fsdp_cpu_ram_efficient_loading: true (re-tying the weights fails on the LoRA layer); "
        "set fsdp_cpu_ram_efficient_loading: false in the accelerate config, or leave lm_head "
        "out of target_modules"
    )


def adapter_summary(model: Any) -> dict[str, Any]:
    """Trainable and total parameter counts, and the modules LoRA wrapped."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    summary: dict[str, Any] = {"trainable_params": trainable, "total_params": total}
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        summary["target_modules"] = sorted(peft_config["default"].target_modules)
    return summary


def check_target_modules(model: Any, names: list[str]) -> None:
    """Every name in ``target_modules`` must name a module of the model (PEFT accepts a list
    in which only some names match, and the rest then train nothing)."""
    if not names or names == [ALL_LINEAR]:
        return
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    full = {name for name, _ in model.named_modules()}
    missing = [name for name in names if name not in leaves and name not in full]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
        raise ConfigError(
            f"field 'target_modules': the model has no module named {', '.join(map(repr, missing))}"
            f"; its linear layers: {', '.join(linear)} (or {ALL_LINEAR!r})"
        )


def check_rank(model: Any, rank: int, names: list[str] | None) -> None:
    """A rank above the smaller side of a layer LoRA adapts adds nothing to what that layer can
    learn, and a large one cannot be allocated: refuse it before PEFT allocates it."""
    output = model.get_output_embeddings()
    chosen = set(names or []) - {ALL_LINEAR}

    def adapted(name: str, module: Any) -> bool:
        if chosen:  # the names given, else every linear layer but the output layer (all-linear)
            return name in chosen or name.rsplit(".", 1)[-1] in chosen
        return module is not output

    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and adapted(name, module)
    ]
    if not layers:
        return
    name, module = min(layers, key=lambda item: min(item[1].in_features, item[1].out_features))
    smallest = min(module.in_features, module.out_features)
    if rank > smallest:
        raise ConfigError(
            f"field 'lora_r': rank {rank} is larger than the smaller side of the layer {name} "
            f"({module.in_features} x {module.out_features}) that LoRA adapts; choose lora_r <= "
            f"{smallest}"
        )
