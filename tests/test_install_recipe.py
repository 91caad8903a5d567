"""The torch the README and the Makefile tell users to install is one that the installed
transformers and accelerate accept (their declared minimum torch), with a CUDA wheel index."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r'TORCH_SPEC\s*\??=\s*"?torch==([0-9][0-9a-z.+]*)"?')
INDEX = re.compile(r'TORCH_INDEX="--index-url (\S+)"')


def torch_pins(text: str) -> list[str]:
    return PIN.findall(text)


def declared_torch(package: str) -> SpecifierSet:
    """What ``package`` declares it needs of torch: its unconditional requirement, or, where
    torch is an extra (transformers), the ``torch`` extra's."""
    specifiers = SpecifierSet()
    for line in importlib.metadata.requires(package) or []:
        requirement = Requirement(line)
        if requirement.name != "torch":
            continue
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": "torch"}):
            specifiers &= requirement.specifier
    return specifiers


def test_pins_are_found_where_users_read_them() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert len(torch_pins(readme)) >= 2  # "Two commands" and "On GPUs and several machines"
    assert len(torch_pins(makefile)) >= 2  # the default and the GPU example
    for text in (readme, makefile):
        for url in INDEX.findall(text):
            assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu1[0-9]{2}", url), url


@pytest.mark.parametrize("package", ["transformers", "accelerate"])
def test_every_pinned_torch_is_accepted(package: str) -> None:
    specifiers = declared_torch(package)
    assert str(specifiers), f"{package} declares no torch requirement"
    pins = torch_pins((ROOT / "README.md").read_text()) + torch_pins(
        (ROOT / "Makefile").read_text()
    )
    refused = [pin for pin in pins if Version(pin) not in specifiers]
    version = importlib.metadata.version(package)
    assert not refused, f"pinned torch {refused}; {package} {version} needs torch{specifiers}"


def test_a_refused_torch_would_be_caught() -> None:
    assert torch_pins('make test TORCH_SPEC="torch==2.5.1" TORCH_INDEX="..."') == ["2.5.1"]
    assert Version("2.5.1") not in declared_torch("accelerate")
