"""Model loading helpers: the ``auto`` dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seglm import models
from seglm.models import cpu_has_native_bf16, parse_dtype, resolve_dtype

AVX2_FLAGS = "flags : fpu sse sse2 avx avx2 fma f16c\n"
BF16_FLAGS = "flags : fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_tile\n"


def test_named_dtypes_are_kept() -> None:
    assert [resolve_dtype(name) for name in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert parse_dtype("bf16") is torch.bfloat16


def test_native_bf16_needs_the_cpu_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    (tmp_path / "avx2").write_text(AVX2_FLAGS)
    (tmp_path / "bf16").write_text(BF16_FLAGS)
    assert not cpu_has_native_bf16(tmp_path / "avx2")
    assert cpu_has_native_bf16(tmp_path / "bf16")
    assert not cpu_has_native_bf16(tmp_path / "missing")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not cpu_has_native_bf16(tmp_path / "bf16")  # oneDNN would not use it


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_native_bf16(
    native: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    assert resolve_dtype("auto") == expected
    assert parse_dtype("AUTO") is models.TORCH_DTYPES[expected]


def test_unknown_dtype_names_the_choices() -> None:
    with pytest.raises(ValueError, match="fp32, bf16, fp16 or auto"):
        parse_dtype("int8")


def test_one_process_converts_the_offline_model_while_the_others_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from filelock import FileLock

    monkeypatch.setenv("SEGLM_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_gguf_file", lambda alias: tmp_path / "model.gguf")
    converted: list[Path] = []

    def convert(gguf: Path, target: Path) -> None:
        converted.append(target)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.parent.mkdir(parents=True)
    # Another process is converting: this one waits for its lock, then finds the folder made.
    other = FileLock(target.parent / ".smollm2-135m-instruct.lock")
    other.acquire()
    found: list[str] = []
    waiter = threading.Thread(
        target=lambda: found.append(models.resolve_model_path("smollm2-135m-instruct"))
    )
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not found  # held up by the lock
    convert(tmp_path / "model.gguf", target)
    converted.clear()
    other.release()
    waiter.join(timeout=30)
    assert found == [str(target)] and converted == []  # not converted a second time
    # Nobody converting and no folder yet: this process converts, once.
    for child in target.iterdir():
        child.unlink()
    target.rmdir()
    assert models.resolve_model_path("SmolLM2-135M-Instruct") == str(target)
    assert converted == [target]


HUB_UNREACHABLE = (
    "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
    "in the cached files."
)


@pytest.mark.parametrize("loader", [models.load_tokenizer, models.load_model])
def test_a_hub_id_the_hub_cannot_provide_is_named_in_the_error(
    loader: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError(HUB_UNREACHABLE)

    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(OSError, match="model 'someorg/missing-model': not a local folder") as error:
        loader("someorg/missing-model")  # type: ignore[operator]
    assert HUB_UNREACHABLE in str(error.value)


def test_a_local_folders_own_error_passes_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("config.json is damaged")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(OSError, match=r"^config\.json is damaged$"):
        models.load_tokenizer(str(tmp_path))
