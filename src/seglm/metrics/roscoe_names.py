"""The names of ROSCOE's score families and scores, cheap to import: the evaluation settings
check a family name without loading the scorer (seglm.metrics.roscoe)."""

from __future__ import annotations

SCORES_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "semantic_alignment": (
        "faithfulness_step",
        "faithfulness_token",
        "info_step",
        "repetition_token",
    ),
    "semantic_similarity": ("info_chain", "repetition_step"),
    "logical_inference": ("self_consistency", "source_consistency"),
    "language_coherence": ("perplexity_step", "perplexity_chain", "grammar_step"),
}
FAMILIES = tuple(SCORES_BY_FAMILY)
SCORE_NAMES = tuple(name for names in SCORES_BY_FAMILY.values() for name in names)
