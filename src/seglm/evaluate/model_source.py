"""What a model reference names (a model, an adapter, a seglm run folder or checkpoint), and
loading it for evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seglm.checkpoints import file_problem, last_complete_checkpoint
from seglm.config import TrainConfig, load_run_config
from seglm.evaluate.common import ADAPTER_WEIGHTS, MODEL_WEIGHTS, EvalError
from seglm.runs import (
    RUN_CONFIG_FILE,
    TRAIN_REPORT_FILE,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where an evaluation's weights and tokenizer come from; nothing is loaded yet."""

    name: str  # what metrics.json records
    base: str  # the model to load: alias, hub id or folder
    adapter: str | None  # a PEFT adapter folder to apply to ``base``
    tokenizer: str
    run_config: TrainConfig | None = None
    # Only the caller's explicit choice: a run folder is data, never a source of trust.
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """A model and its tokenizer, ready to evaluate; pass one to :func:`evaluate` so that it is
    not loaded again. ``run_config`` (a seglm run's config) gives the default task."""

    model: Any
    tokenizer: Any
    name: str = "in-memory model"
    adapter: str | None = None
    run_config: TrainConfig | None = None


def resolve_model(
    model_ref: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None = None,
    *,
    trust_remote_code: bool = False,
) -> ModelSource:
    """What ``model_ref`` names: a seglm run folder (``config.yaml`` and weights at its root), an
    adapter folder (``adapter_config.json``, e.g. a run's checkpoint), or a model (alias, hub id,
    folder), optionally with ``adapter``.

    Custom model code (an ``auto_map`` in the model's config) runs only with
    ``trust_remote_code``; a run folder's own ``trust_remote_code: true`` is ignored."""
    source = _resolve_model(model_ref, adapter)
    for folder in {source.base, source.adapter} - {None}:
        if Path(folder).is_dir():  # type: ignore[arg-type]
            check_whole(Path(folder))  # type: ignore[arg-type]
    return dataclasses.replace(source, trust_remote_code=trust_remote_code)


def check_whole(folder: Path) -> None:
    """Refuse a model or adapter folder with a file that does not read whole (weights cut short
    by a copy or a kill, a pickle that weights_only refuses), before anything loads it."""
    for path in sorted(folder.iterdir()):
        problem = file_problem(path) if path.is_file() else None
        if problem:
            raise EvalError(
                f"{path} {problem}; the weights in {folder} are damaged: save or train them "
                "again (a run's earlier checkpoint may still be whole)"
            )


def _resolve_model(
    model_ref: str | os.PathLike[str], adapter: str | os.PathLike[str] | None
) -> ModelSource:
    path = Path(model_ref)
    if (path / RUN_CONFIG_FILE).is_file() or (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise EvalError(
                f"{path} carries its own weights; an adapter goes with a base model only"
            )
        if (path / RUN_CONFIG_FILE).is_file():
            return run_source(path, load_run_config(path))
        return _adapter_source(path, base=None)
    if adapter is not None:
        return _adapter_source(Path(adapter), base=str(model_ref))
    from seglm.models import model_name_problem

    problem = model_name_problem(str(model_ref))
    if problem:
        raise EvalError(problem)
    # A full fine-tuning checkpoint is a model folder inside its run folder.
    run_config = _parent_run_config(path) if path.is_dir() else None
    return ModelSource(str(model_ref), str(model_ref), None, str(path), run_config)


def run_source(run_dir: Path, config: TrainConfig, trust_remote_code: bool = False) -> ModelSource:
    """A seglm run folder made with ``config`` (its config.yaml), as an evaluation's model:
    the weights at its root, with its base model when they are an adapter."""
    tokenizer = str(run_dir) if _has_tokenizer(run_dir) else config.model
    trust = trust_remote_code
    if _has_any(run_dir, ADAPTER_WEIGHTS):
        return ModelSource(str(run_dir), config.model, str(run_dir), tokenizer, config, trust)
    if _has_any(run_dir, MODEL_WEIGHTS):
        return ModelSource(str(run_dir), str(run_dir), None, tokenizer, config, trust)
    problem = f"run folder {run_dir} has no weights at its root (expected {ADAPTER_WEIGHTS[0]} "
    problem += f"for LoRA or {MODEL_WEIGHTS[0]} for full fine-tuning)"
    if not (run_dir / TRAIN_REPORT_FILE).is_file():
        problem += "; its training has not finished (no train_report.json)"
    checkpoint, _ = last_complete_checkpoint(run_dir)  # not one a kill cut short while saving
    if checkpoint is not None:
        problem += f"; a checkpoint can be evaluated instead, e.g. {checkpoint}"
    raise EvalError(problem)


def _adapter_source(folder: Path, base: str | None) -> ModelSource:
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise EvalError(f"adapter {folder}: no adapter_config.json (not a PEFT adapter folder)")
    if not _has_any(folder, ADAPTER_WEIGHTS):
        raise EvalError(f"adapter {folder}: no weights ({' or '.join(ADAPTER_WEIGHTS)})")
    run_config = _parent_run_config(folder)
    if base is None:
        base = run_config.model if run_config else _adapter_base(config_file)
    tokenizer = str(folder) if _has_tokenizer(folder) else base
    return ModelSource(str(folder), base, str(folder), tokenizer, run_config)


def _parent_run_config(folder: Path) -> TrainConfig | None:
    """The run's config when ``folder`` is one of its checkpoints."""
    config_file = folder.parent / RUN_CONFIG_FILE
    return load_run_config(folder.parent) if config_file.is_file() else None


def _adapter_base(config_file: Path) -> str:
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise EvalError(f"{config_file}: not a readable adapter config ({error})") from None
    if not isinstance(base, str) or not base:
        raise EvalError(f"{config_file}: field 'base_model_name_or_path' is missing")
    return base


def _has_any(folder: Path, names: Sequence[str]) -> bool:
    return any((folder / name).is_file() for name in names)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file()


def load_source_tokenizer(source: ModelSource) -> Any:
    from seglm.models import load_tokenizer

    config = source.run_config
    if config is not None and config.trust_remote_code and not source.trust_remote_code:
        logger.warning(
            "%s: the run's config.yaml sets trust_remote_code: true; ignored, since a run folder "
            "is data: no code from it runs unless you pass --trust-remote-code "
            "(trust_remote_code=True)",
            source.name,
        )
    with _remote_code_refused(source, source.tokenizer):
        return load_tokenizer(source.tokenizer, trust_remote_code=source.trust_remote_code)


@contextlib.contextmanager
def _remote_code_refused(source: ModelSource, what: str) -> Iterator[None]:
    """transformers refuses a model whose config maps it to custom code (``auto_map``) unless
    trusted; say how seglm lets the user trust it."""
    try:
        yield
    except ValueError as error:
        if source.trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise EvalError(
            f"{what} needs custom code (an auto_map in its config) to load, and seglm runs no "
            "code from a model or run folder on its own (a run folder's trust_remote_code "
            "setting counts for nothing); read that code, then pass --trust-remote-code "
            "(trust_remote_code=True) to run it"
        ) from None


def load_source_model(
    source: ModelSource, tokenizer: Any, dtype: str = "fp32", device: str | None = None
) -> LoadedModel:
    """Load the weights ``source`` names; a LoRA adapter is merged (no cost per token)."""
    from seglm.models import load_model

    with _remote_code_refused(source, source.base):
        model = load_model(source.base, dtype=dtype, trust_remote_code=source.trust_remote_code)
    if source.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
    model.to(device or default_device()).eval()
    check_vocabulary(model, tokenizer, source.name)
    return LoadedModel(model, tokenizer, source.name, source.adapter, source.run_config)


def load_for_eval(
    model_ref: str | os.PathLike[str],
    *,
    adapter: str | os.PathLike[str] | None = None,
    dtype: str = "fp32",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model (alias, hub id, folder, run folder or adapter folder) to evaluate it on
    several tasks without loading it again; ``trust_remote_code`` runs a model's custom code."""
    source = resolve_model(model_ref, adapter, trust_remote_code=trust_remote_code)
    return load_source_model(source, load_source_tokenizer(source), dtype, device)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_vocabulary(model: Any, tokenizer: Any, name: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise EvalError(
            f"the tokenizer has {len(tokenizer)} tokens but model {name} embeds only {rows}: "
            "they do not belong together"
        )


def dtype_name(model: Any) -> str:
    from seglm.models import TORCH_DTYPES

    return next(name for name, dtype in TORCH_DTYPES.items() if dtype == model.dtype)
