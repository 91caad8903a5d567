"""The loss spec: parsed once, torch-free, canonical text, identity, inline options."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest

from seglm.losses.spec import LossSpec


def test_the_spec_the_config_and_the_registry_need_no_torch() -> None:
    code = (
        "import sys, seglm.losses.spec, seglm.config, seglm.report.load;"
        "from seglm.losses.spec import LossSpec;"
        "LossSpec.parse('ce=0.6,lovasz=0.4').ce_weights('all');"
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("ce=0.6, lovasz_softmax=0.4", "ce=0.6,lovasz=0.4"),
        ("lovasz@answer", "lovasz=1"),
        ("CE@Answer=1", "ce@answer=1"),
        ("focal(gamma=3)@all=1", "focal(gamma=3)@all=1"),
        ("sadl(gamma=2, alpha=1)=0.4,ce=0.6", "sadl(alpha=1,gamma=2)=0.4,ce=0.6"),
        ("prob(k=10)@answer=1", "prob(k=10)=1"),
        ("eaft(k=5)=1", "eaft(k=5)=1"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    spec = LossSpec.parse(text)
    assert spec == canonical and LossSpec.parse(spec) == spec


def test_identity_ignores_order_and_spelling_not_options() -> None:
    assert (
        LossSpec.parse("lovasz=0.4,ce=0.6").identity()
        == LossSpec.parse("ce=0.6,lovasz_softmax@answer=0.4").identity()
    )
    assert LossSpec.parse("prob=1").identity() != LossSpec.parse("prob(k=10)=1").identity()


def test_options_are_checked_as_their_config_fields() -> None:
    assert LossSpec.parse("eaft(k=5)=1").terms[0].options == (("k", 5),)
    with pytest.raises(ValueError, match="option 'eaft_k' expects an integer"):
        LossSpec.parse("eaft(k=2.5)=1")
    with pytest.raises(ValueError, match="gdice_absent='none' is not one of"):
        LossSpec.parse("gdice(absent=none)=1")
    with pytest.raises(ValueError, match="option 'k' of prob appears twice"):
        LossSpec.parse("prob(k=1,k=2)=1")


@pytest.mark.parametrize("duplicate", [pickle, copy])
def test_survives_pickle_and_copy(duplicate: object) -> None:
    spec = LossSpec.parse("ce=0.5,prob(k=2)@all=0.5")
    twin = pickle.loads(pickle.dumps(spec)) if duplicate is pickle else copy.deepcopy(spec)
    assert type(twin) is LossSpec and twin == spec and twin.terms == spec.terms


@pytest.mark.parametrize(
    ("loss", "lam", "text"),
    [("lovasz", 0.6, "ce=0.6,lovasz=0.4"), ("focal", 0.2, "ce=0.2,focal=0.8"), ("ce", 0.6, "ce=1")],
)
def test_mix_is_the_papers_form(loss: str, lam: float, text: str) -> None:
    assert LossSpec.mix(loss, lam) == text


def test_what_the_report_reads() -> None:
    control = LossSpec.parse("ce=0.6,ce@answer=0.4")
    assert control.ce_weights("all") == {"all": 0.6, "answer": 0.4}
    assert control.ce_weights("answer") == {"answer": 1.0}
    assert LossSpec.parse("ce=0.6,lovasz=0.4").ce_weights("all") is None
    assert LossSpec.parse("ce=0.2,lovasz=0.8").ce_all_weight("all") == pytest.approx(0.2)
    assert LossSpec.parse("dft@answer=1").ce_all_weight("all") == 0.0
    assert LossSpec.parse("ce@answer=1,dft@all=1").label_scope("answer") == "all"
    assert LossSpec.parse("ce=1").label_scope("answer") == "answer"
