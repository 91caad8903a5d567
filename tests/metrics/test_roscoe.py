"""ROSCOE: step splitting, the formulas on hand-built vectors, the scorer with injected models,
the real code paths of the NLI/grammar/perplexity models on tiny random models, and the offline
MiniLM embeddings on real GSM8K solutions."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from seglm.metrics.roscoe import (
    SCORE_NAMES,
    SCORES_BY_FAMILY,
    RoscoeConfig,
    RoscoeScorer,
    alignment,
    consistency,
    faithfulness_step,
    faithfulness_token,
    grammar_step,
    info_chain,
    info_step,
    perplexity_step,
    repetition_step,
    repetition_token,
    scaled_cosine,
    source_pairs,
    split_sentences,
    split_steps,
    step_pairs,
)
from seglm.metrics.roscoe_models import (
    CausalLMPerplexity,
    ModelUnavailable,
    RoscoeModels,
    label_index,
    load_models,
    offline_embedding_folder,
    resolve_pretrained,
)

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")

# Hand-built unit vectors with exact cosines: cos(A, C) = 0.6, cos(B, C) = 0.8, cos(A, B) = 0,
# cos(A, D) = -1, cos(C, D) = -0.6; so cos_s = (1 + cos) / 2 is 0.8, 0.9, 0.5, 0, 0.2.
A = np.array([1.0, 0.0])
B = np.array([0.0, 1.0])
C = np.array([0.6, 0.8])
D = np.array([-1.0, 0.0])


def stack(*vectors: np.ndarray) -> np.ndarray:
    return np.stack(vectors)


# --- steps ---------------------------------------------------------------------------------------


def test_gsm8k_solution_splits_into_sentences_without_annotations() -> None:
    chain = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    )
    assert split_steps(chain) == [
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.",
        "#### 72",
    ]


def test_annotation_only_output_gives_one_step_per_formula() -> None:
    assert split_steps("<<48/2=24>> <<48+24=72>> #### 72") == ["48/2=24", "48+24=72", "#### 72"]
    assert split_steps("<<2*3=6>>\nSo the answer is 6.") == ["2*3=6", "So the answer is 6."]


def test_sentences_split_at_ends_but_not_at_decimals_abbreviations_or_lowercase() -> None:
    text = "Mr. Smith has 3.5 apples. He eats one! How many are left? e.g. none.\n\nThe end"
    assert split_sentences(text) == [
        "Mr. Smith has 3.5 apples.",
        "He eats one!",
        "How many are left? e.g. none.",
        "The end",
    ]
    assert split_steps("  \n\n ") == []


# --- formulas on hand-built vectors ---------------------------------------------------------


def test_scaled_cosine_and_alignment_exact() -> None:
    np.testing.assert_allclose(scaled_cosine(stack(A), stack(A, B, C, D)), [[1.0, 0.5, 0.8, 0.0]])
    # align(x -> Y) takes the best y for each x.
    np.testing.assert_allclose(alignment(stack(A, B), stack(C, D)), [0.8, 0.9])
    # Norms do not matter.
    np.testing.assert_allclose(scaled_cosine(stack(3 * C), stack(0.5 * B)), [[0.9]])


def test_semantic_alignment_formulas_exact() -> None:
    steps, source = stack(A, B), stack(C, D)
    assert faithfulness_step(steps, source) == pytest.approx((0.8 + 0.9) / 2)
    # align(s -> h): C -> max(0.8, 0.9), D -> max(0, 0.5).
    assert info_step(steps, source) == pytest.approx(((0.8 + 0.9) / 2 + (0.9 + 0.5) / 2) / 2)
    # Token alignments: A -> {D, C} 0.8, B -> 0.9, C -> 1.0; with the 2 step alignments: 5 terms.
    step_tokens, source_tokens = [stack(A, B), stack(C)], [stack(D), stack(C)]
    expected = (0.8 + 0.9 + 0.8 + 0.9 + 1.0) / 5
    assert faithfulness_token(steps, source, step_tokens, source_tokens) == pytest.approx(expected)


def test_repetition_token_aligns_later_steps_tokens_to_earlier_steps() -> None:
    # h1 -> h0: mean(B->A 0.5, C->A 0.8) = 0.65; h2 -> h0: mean(1, 0.8) = 0.9; h2 -> h1: mean(0.8,
    # 1) = 0.9. The other direction (h0 -> h2) would be 1.0 and give 0.
    tokens = [stack(A), stack(B, C), stack(A, C)]
    assert repetition_token(tokens) == pytest.approx(1 - 0.9)
    assert repetition_token([stack(A, B)]) == 1.0


def test_semantic_similarity_formulas_exact() -> None:
    assert info_chain(A, C) == pytest.approx(0.8)
    assert info_chain(C, 2 * C) == pytest.approx(1.0)
    assert repetition_step(stack(A, B)) == pytest.approx(0.5)
    assert repetition_step(stack(A, B, C)) == pytest.approx(1 - 0.9)
    assert repetition_step(stack(A)) == 1.0


def test_inference_and_language_formulas_exact() -> None:
    assert consistency([0.2, 0.7, 0.1]) == pytest.approx(0.3)
    assert consistency([]) == 1.0
    assert step_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert source_pairs(["s1", "s2"], ["h1"]) == [("s1", "h1"), ("s2", "h1")]
    assert perplexity_step([2.0, 4.0]) == pytest.approx(1 / 3)
    assert grammar_step([0.2, 0.6]) == pytest.approx(0.4)


# --- the scorer with injected models ------------------------------------------------------------

SOURCE = "Alpha one. Beta two."
HYPOTHESIS = "Gamma three.\nDelta four."
SENTENCES = {
    "Gamma three.": A,
    "Delta four.": B,
    "Alpha one.": C,
    "Beta two.": D,
    "Gamma three. Delta four.": A,  # the whole chain
    "Alpha one. Beta two.": C,  # the whole source
}
TOKENS = {
    "Gamma three.": stack(A, B),
    "Delta four.": stack(C),
    "Alpha one.": stack(D),
    "Beta two.": stack(C),
}
CONTRADICTION = {
    ("Gamma three.", "Delta four."): 0.25,  # premise = the earlier step
    ("Alpha one.", "Gamma three."): 0.1,
    ("Beta two.", "Gamma three."): 0.4,
    ("Alpha one.", "Delta four."): 0.2,
    ("Beta two.", "Delta four."): 0.3,
}
PERPLEXITY = {"Gamma three.": 2.0, "Delta four.": 4.0, "Gamma three. Delta four.": 5.0}
ACCEPTABLE = {"Gamma three.": 0.9, "Delta four.": 0.5}
EXPECTED = {
    "faithfulness_step": 0.85,
    "faithfulness_token": 0.88,
    "info_step": 0.775,
    "repetition_token": 0.1,  # Delta's C -> Gamma's {A, B}: 0.9
    "info_chain": 0.8,
    "repetition_step": 0.5,
    "self_consistency": 0.75,
    "source_consistency": 0.6,
    "perplexity_step": 1 / 3,
    "perplexity_chain": 0.2,
    "grammar_step": 0.7,
}


class Recorder:
    """A fake model: looks each input up in a table and records every call."""

    def __init__(self, table: dict) -> None:
        self.table, self.calls = table, []

    def __call__(self, texts: list[str], pairs: list[str] | None = None):
        keys = texts if pairs is None else list(zip(texts, pairs, strict=True))
        self.calls.append(keys)
        values = [self.table[key] for key in keys]
        return np.stack(values) if isinstance(values[0], np.ndarray) else np.array(values)


def fake_models() -> RoscoeModels:
    return RoscoeModels(
        sentence=Recorder(SENTENCES),
        token=lambda texts: [TOKENS[text] for text in texts],
        nli=Recorder(CONTRADICTION),
        perplexity=Recorder(PERPLEXITY),
        grammar=Recorder(ACCEPTABLE),
        names=dict.fromkeys(("sentence", "token", "nli", "perplexity", "grammar"), "fake"),
    )


def test_scorer_computes_every_paper_score_exactly() -> None:
    scorer = RoscoeScorer(RoscoeConfig(progress=False), models=fake_models())
    result = scorer.score([{"source": SOURCE, "hypothesis": HYPOTHESIS}])
    assert result.skipped == []
    (scores,) = result.scores
    assert list(scores) == list(SCORE_NAMES)
    assert scores == pytest.approx(EXPECTED)
    assert json.loads(json.dumps(result.to_dict()))["scores"][0] == pytest.approx(EXPECTED)


def test_scorer_embeds_each_unique_sentence_once_in_few_batches() -> None:
    models = fake_models()
    scorer = RoscoeScorer(RoscoeConfig(progress=False, batch_size=4), models=models)
    examples = [{"source": SOURCE, "hypothesis": HYPOTHESIS}] * 3
    examples.append({"source": SOURCE, "hypothesis": "Delta four."})
    result = scorer.score(examples)
    embedded = [text for call in models.sentence.calls for text in call]
    assert sorted(embedded) == sorted(SENTENCES)  # 6 unique texts, each encoded once
    assert len(models.sentence.calls) == 2  # batches of 4
    assert all(len(call) <= 4 for call in models.nli.calls)
    assert result.scores[0] == result.scores[2]
    assert result.scores[3]["repetition_step"] == 1.0  # a single step repeats nothing


def test_missing_model_skips_its_family_with_a_reason_and_never_fakes_scores() -> None:
    models = fake_models()
    models.nli = None
    models.unavailable["nli"] = "'some/nli-model': not found"
    scorer = RoscoeScorer(RoscoeConfig(progress=False), models=models)
    result = scorer.score([{"source": SOURCE, "hypothesis": HYPOTHESIS}])
    (skipped,) = result.skipped
    assert skipped.family == "logical_inference"
    assert skipped.scores == ("self_consistency", "source_consistency")
    assert "'some/nli-model': not found" in skipped.message
    assert "RoscoeConfig.nli_model" in skipped.message
    assert result.scores[0]["self_consistency"] is None
    assert result.scores[0]["source_consistency"] is None
    assert result.scores[0]["faithfulness_step"] == pytest.approx(0.85)


def test_only_requested_families_are_scored() -> None:
    models = fake_models()
    config = RoscoeConfig(families=("semantic_similarity",), progress=False)
    (scores,) = (
        RoscoeScorer(config, models=models)
        .score([{"source": SOURCE, "hypothesis": HYPOTHESIS}])
        .scores
    )
    assert {name for name, value in scores.items() if value is not None} == {
        "info_chain",
        "repetition_step",
    }
    assert models.nli.calls == [] and models.perplexity.calls == []


def test_whole_chain_and_source_are_encoded_only_for_their_scores() -> None:
    models = fake_models()
    config = RoscoeConfig(families=("semantic_alignment",), progress=False)
    RoscoeScorer(config, models=models).score([{"source": SOURCE, "hypothesis": HYPOTHESIS}])
    embedded = {text for call in models.sentence.calls for text in call}
    # info_chain (semantic similarity) is the only reader of the whole texts.
    assert SOURCE not in embedded and HYPOTHESIS not in embedded
    assert embedded  # the steps and source sentences still are


def test_empty_chain_has_no_scores_and_bad_input_names_the_field() -> None:
    scorer = RoscoeScorer(RoscoeConfig(progress=False), models=fake_models())
    (scores,) = scorer.score([{"source": SOURCE, "hypothesis": " \n"}]).scores
    assert set(scores.values()) == {None}
    with pytest.raises(
        ValueError, match=r"example 1: field 'hypothesis' must be a string.*missing"
    ):
        scorer.score([{"source": SOURCE, "hypothesis": HYPOTHESIS}, {"source": SOURCE}])
    with pytest.raises(ValueError, match=r"example 0: field 'source' must be a string.*int"):
        scorer.score([{"source": 3, "hypothesis": HYPOTHESIS}])
    with pytest.raises(ValueError, match=r"families='semantic' is not one of .*did you mean"):
        RoscoeConfig(families=("semantic",))


# --- model loading and the real model code paths on tiny random models ----------------------------


def test_unreachable_hub_model_is_unavailable_with_instructions(monkeypatch) -> None:
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "model_info", no_hub)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    with pytest.raises(ModelUnavailable, match=r"hub did not answer .*hf download nobody/x"):
        resolve_pretrained("nobody/x")
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    with pytest.raises(ModelUnavailable, match=r"HF_HUB_OFFLINE is set; .*hf download nobody/x"):
        resolve_pretrained("nobody/x")
    assert resolve_pretrained(str(Path.cwd())) == str(Path.cwd())
    with pytest.raises(ModelUnavailable, match="no such folder"):
        resolve_pretrained("/no/such/folder")
    config = RoscoeConfig(families=("logical_inference",), nli_model="nobody/x")
    models = load_models(config, ["nli"])
    assert models.nli is None
    assert "'nobody/x'" in models.unavailable["nli"]


def test_label_index_reads_id2label_or_the_override() -> None:
    labels = {0: "ENTAILMENT", 1: "neutral", 2: "Contradiction"}
    assert label_index(labels, None, ("contradiction",), "opt") == 2
    assert label_index({0: "LABEL_0", 1: "LABEL_1"}, 1, ("acceptable",), "opt") == 1
    assert label_index({0: "LABEL_0", 1: "LABEL_1"}, "label_0", ("acceptable",), "opt") == 0
    with pytest.raises(ValueError, match=r"no label named acceptable.*set opt"):
        label_index({0: "LABEL_0", 1: "LABEL_1"}, None, ("acceptable",), "opt")
    with pytest.raises(ValueError, match="opt=5 is not a class index"):
        label_index(labels, 5, ("contradiction",), "opt")


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(offline_embedding_folder())


def save_tiny_classifier(folder: Path, tokenizer, id2label: dict[int, str]) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=id2label,
        label2id={label: index for index, label in id2label.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def class_probabilities(folder: Path, tokenizer, texts: Sequence[str], pairs=None) -> np.ndarray:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    encoded = tokenizer(list(texts), pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(**encoded).logits, dim=-1).numpy()


def test_nli_family_runs_a_real_sequence_classifier(tmp_path, bert_tokenizer) -> None:
    id2label = {0: "entailment", 1: "contradiction", 2: "neutral"}
    folder = save_tiny_classifier(tmp_path / "nli", bert_tokenizer, id2label)
    config = RoscoeConfig(families=("logical_inference",), nli_model=str(folder), progress=False)
    scorer = RoscoeScorer(config)
    assert scorer.skipped == [] and scorer.models.names == {"nli": str(folder)}
    source, steps = ["Alpha one.", "Beta two."], ["Gamma three.", "Delta four.", "Eps five."]
    example = {"source": " ".join(source), "hypothesis": "\n".join(steps)}
    (scores,) = scorer.score([example]).scores
    premises, hypotheses = zip(*step_pairs(steps), strict=True)
    contradiction = class_probabilities(folder, bert_tokenizer, premises, list(hypotheses))[:, 1]
    assert scores["self_consistency"] == pytest.approx(1 - contradiction.max(), abs=1e-5)
    premises, hypotheses = zip(*source_pairs(source, steps), strict=True)
    contradiction = class_probabilities(folder, bert_tokenizer, premises, list(hypotheses))[:, 1]
    assert scores["source_consistency"] == pytest.approx(1 - contradiction.max(), abs=1e-5)
    assert 0 <= scores["source_consistency"] <= 1


def test_grammar_score_is_the_acceptable_class_probability(tmp_path, bert_tokenizer) -> None:
    folder = save_tiny_classifier(
        tmp_path / "cola", bert_tokenizer, {0: "unacceptable", 1: "acceptable"}
    )
    config = RoscoeConfig(
        families=("language_coherence",),
        grammar_model=str(folder),
        perplexity_model=str(tmp_path / "none"),
        progress=False,
    )
    scorer = RoscoeScorer(config)
    assert [s.scores for s in scorer.skipped] == [("perplexity_step", "perplexity_chain")]
    (scores,) = scorer.score(
        [{"source": "Alpha one.", "hypothesis": "Gamma three.\nDelta four."}]
    ).scores
    acceptable = class_probabilities(folder, bert_tokenizer, ["Gamma three.", "Delta four."])[:, 1]
    assert scores["grammar_step"] == pytest.approx(acceptable.mean(), abs=1e-5)
    assert scores["perplexity_step"] is None


def test_a_plain_transformers_folder_gives_pooled_sentences_and_token_states(
    tmp_path, bert_tokenizer
) -> None:
    from transformers import AutoModel

    folder = save_tiny_classifier(tmp_path / "encoder", bert_tokenizer, {0: "a", 1: "b"})
    config = RoscoeConfig(
        families=("semantic_alignment",), sentence_model=str(folder), progress=False
    )
    scorer = RoscoeScorer(config)
    assert scorer.models.names == {"sentence": str(folder), "token": str(folder)}
    assert scorer.models.sentence.__self__ is scorer.models.token.__self__  # loaded once
    texts = ["Gamma three.", "Delta four and five."]
    encoded = bert_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = AutoModel.from_pretrained(folder).eval()(**encoded)
    np.testing.assert_allclose(scorer.models.sentence(texts), output.pooler_output, atol=1e-5)
    tokens = scorer.models.token(texts)
    lengths = [len(bert_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    assert [len(t) for t in tokens] == lengths  # [CLS], [SEP] and padding removed
    np.testing.assert_allclose(
        tokens[0], output.last_hidden_state[0, 1 : 1 + lengths[0]], atol=1e-5
    )
    (scores,) = scorer.score([{"source": "Alpha one.", "hypothesis": "\n".join(texts)}]).scores
    assert all(0 <= scores[name] <= 1 for name in SCORES_BY_FAMILY["semantic_alignment"])


@pytest.fixture(scope="module")
def tiny_lm(bert_tokenizer):
    from seglm.models import tiny_llama

    bert_tokenizer.bos_token = "[CLS]"
    bert_tokenizer.eos_token = "[SEP]"
    return tiny_llama(vocab_size=bert_tokenizer.vocab_size).eval(), bert_tokenizer


def test_perplexity_is_exp_mean_nll_after_a_start_token_and_ignores_padding(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    perplexity = CausalLMPerplexity(model, tokenizer)
    texts = ["Gamma three is a number.", "Delta.", "Eps five and six and seven."]
    batched = perplexity(texts)
    for text, value in zip(texts, batched, strict=True):
        ids = torch.tensor(
            [[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
        )
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        assert value == pytest.approx(math.exp(loss.item()), rel=1e-4)
        assert perplexity([text])[0] == pytest.approx(value, rel=1e-4)


def test_perplexity_model_loads_from_a_folder(tmp_path, tiny_lm) -> None:
    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = RoscoeConfig(
        families=("language_coherence",),
        perplexity_model=str(tmp_path),
        grammar_model=str(tmp_path / "none"),
        progress=False,
    )
    scorer = RoscoeScorer(config)
    assert scorer.models.names == {"perplexity": str(tmp_path)}
    (scores,) = scorer.score(
        [{"source": "Alpha one.", "hypothesis": "Gamma three.\nDelta four."}]
    ).scores
    # A random model over a 30k vocabulary is close to uniform: PPL in the thousands.
    assert 0 < scores["perplexity_step"] < 1e-2 and 0 < scores["perplexity_chain"] < 1e-2


# --- the offline default embeddings (all-MiniLM-L6-v2) on real GSM8K solutions -------------------


@pytest.fixture(scope="module")
def minilm_scorer() -> RoscoeScorer:
    config = RoscoeConfig(
        families=("semantic_alignment", "semantic_similarity"),
        sentence_model="all-MiniLM-L6-v2",
        progress=False,
    )
    scorer = RoscoeScorer(config)
    assert scorer.skipped == []
    return scorer


@pytest.fixture(scope="module")
def gsm8k() -> list[dict[str, str]]:
    with GSM8K_TEST.open() as lines:
        return [json.loads(next(lines)) for _ in range(4)]


EMBEDDING_SCORES = SCORES_BY_FAMILY["semantic_alignment"] + SCORES_BY_FAMILY["semantic_similarity"]


def test_minilm_scores_of_gsm8k_solutions_are_in_range_and_grounded(minilm_scorer, gsm8k) -> None:
    own = minilm_scorer.score([{"source": r["question"], "hypothesis": r["answer"]} for r in gsm8k])
    shifted = gsm8k[1:] + gsm8k[:1]
    other = minilm_scorer.score(
        [
            {"source": q["question"], "hypothesis": r["answer"]}
            for q, r in zip(shifted, gsm8k, strict=True)
        ]
    )
    for scores in own.scores:
        assert all(0.0 <= scores[name] <= 1.0 for name in EMBEDDING_SCORES)
    for mine, theirs in zip(own.scores, other.scores, strict=True):
        for name in ("faithfulness_step", "faithfulness_token", "info_step", "info_chain"):
            assert mine[name] > theirs[name], name
        # Repetition looks at the chain only: the question does not matter.
        assert mine["repetition_step"] == pytest.approx(theirs["repetition_step"], abs=1e-6)


def test_minilm_orderings_on_edited_chains(minilm_scorer, gsm8k) -> None:
    question, answer = gsm8k[2]["question"], gsm8k[2]["answer"]
    lines = answer.split("\n")
    repeated = "\n".join([*lines[:2], lines[1], *lines[2:]])
    off_topic = "\n".join(
        [lines[0], "The Eiffel Tower is in Paris and was built in 1889.", *lines[1:]]
    )
    results = minilm_scorer.score(
        [
            {"source": question, "hypothesis": answer},
            {"source": question, "hypothesis": repeated},
            {"source": question, "hypothesis": off_topic},
            {"source": question, "hypothesis": question},
        ]
    ).scores
    plain, repeat, unrelated, identical = results
    assert repeat["repetition_step"] < plain["repetition_step"]
    assert repeat["repetition_token"] < plain["repetition_token"]
    assert repeat["repetition_step"] == pytest.approx(0.0, abs=1e-5)  # an exact repeat
    assert unrelated["faithfulness_step"] < plain["faithfulness_step"]
    for name in ("faithfulness_step", "faithfulness_token", "info_step", "info_chain"):
        assert identical[name] == pytest.approx(1.0, abs=1e-5), name


def test_settings_are_checked_as_every_other_settings_object() -> None:
    config = RoscoeConfig(families="semantic_similarity,logical_inference", batch_size="4")
    assert config.families == ("semantic_similarity", "logical_inference")
    assert config.batch_size == 4
    for option in ("batch_size", "lm_batch_size", "max_length"):
        with pytest.raises(ValueError, match=rf"field '{option}' must be >= 1, got 0"):
            RoscoeConfig(**{option: 0})
    with pytest.raises(ValueError, match=r"field 'device' expects a string, got \[\]"):
        RoscoeConfig(device=[])
