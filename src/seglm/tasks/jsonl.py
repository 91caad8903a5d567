"""``jsonl``: the user's own data, one JSON object per line.

Where: option ``path`` (a folder holding ``<split>.jsonl`` files, or one ``.jsonl`` file whose
name is its split), else the ``data_dir`` given to ``load`` (a folder of ``<split>.jsonl``).

Generative data: ``prompt_field`` (default ``prompt``) is the prompt, used verbatim;
``target_field`` (default ``target``) what the model must produce; ``reference_field`` an
optional separate reference answer (default: the target). ``answer_format`` is ``text``
(exact match on the whole answer) unless set to ``gsm8k`` (targets end in ``#### N``; checked).

Multiple choice: set ``choices_field`` (a list of strings); ``label_field`` (default ``label``)
holds the gold choice as a 0-based index or a letter. The prompt is then the paper's choice
format (``Question: {prompt}\\nA. ...\\nAnswer: ``), the target the gold letter, and
``answer_format`` is ``choice``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from seglm.paths import check_name

from .base import (
    DataDir,
    Example,
    LoadReport,
    Record,
    Task,
    label_index,
    require,
    require_strings,
)
from .gsm8k import final_answer
from .sources import read_jsonl

GENERATIVE_FORMATS = ("text", "gsm8k")


@dataclass
class Jsonl(Task):
    """User data from JSON Lines; field names are options."""

    name: ClassVar[str] = "jsonl"
    plain_max_length: ClassVar[int] = 1024
    max_new_tokens: ClassVar[int] = 256

    path: str | None = None
    prompt_field: str = "prompt"
    target_field: str = "target"
    reference_field: str | None = None
    choices_field: str | None = None
    label_field: str = "label"
    id_field: str | None = None
    answer_format: str | None = None  # type: ignore[misc]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.choices_field:
            if self.answer_format not in (None, "choice"):
                raise ValueError("jsonl with choices_field has answer_format 'choice'")
            self.answer_format = "choice"
        elif self.answer_format is None:
            self.answer_format = "text"
        elif self.answer_format not in GENERATIVE_FORMATS:
            raise ValueError(
                f"jsonl answer_format must be one of {', '.join(GENERATIVE_FORMATS)} "
                f"(or set choices_field); got {self.answer_format!r}"
            )

    @property
    def stop_strings(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("\n",) if self.choices_field else ()

    @property
    def splits(self) -> tuple[str, ...]:  # type: ignore[override]
        """The split names found under ``path`` (empty when only ``data_dir`` will tell)."""
        if self.path is None:
            return ()
        root = Path(self.path)
        if root.is_file():
            return (root.stem,)
        return tuple(sorted(file.stem for file in root.glob("*.jsonl")))

    def resolve_split(self, split: str) -> str:
        return split  # any name: the file it needs is checked when it is opened

    def split_file(self, split: str, data_dir: DataDir) -> Path:
        check_name(split, "split")  # a file name in the data folder, never a path out of it
        if self.path is None and data_dir is None:
            raise ValueError("jsonl needs the option path=FILE_OR_FOLDER, or a data dir")
        root = Path(self.path if self.path is not None else data_dir)  # type: ignore[arg-type]
        if root.is_file():
            if split != root.stem:
                raise ValueError(f"{root} holds only the split {root.stem!r} (its file name)")
            return root
        file = root / f"{split}.jsonl"
        if not file.is_file():
            found = ", ".join(sorted(f.stem for f in root.glob("*.jsonl"))) or "none"
            raise FileNotFoundError(f"{file} is missing (splits found in {root}: {found})")
        return file

    def records(self, split: str, data_dir: DataDir, report: LoadReport) -> Iterator[Record]:
        file = self.split_file(split, data_dir)
        report.source = str(file)
        return read_jsonl(file, split)

    def to_example(self, record: Record) -> Example:
        fields = record.fields()
        where = record.where
        prompt = require(fields, self.prompt_field, str, where, "the prompt")
        record_id = fields.get(self.id_field) if self.id_field else None
        used = {self.prompt_field, self.target_field, self.reference_field, self.choices_field,
                self.label_field, self.id_field}  # fmt: skip
        if record_id is None:
            record_id = record.index
        common = {
            "id": f"{self.name}/{record.split}/{record_id}",
            "source": prompt,
            "metadata": {key: value for key, value in fields.items() if key not in used},
        }
        if self.choices_field:
            choices = require_strings(fields, self.choices_field, where)
            gold = label_index(
                fields.get(self.label_field), len(choices), where, self.label_field, letters=True
            )
            return self.choice_example(
                common["id"], prompt, choices, gold, metadata=common["metadata"]
            )
        target = require(fields, self.target_field, str, where, "the answer to produce")
        reference = target
        if self.reference_field:
            reference = require(fields, self.reference_field, str, where, "the reference answer")
        if self.answer_format == "gsm8k":
            final_answer(reference, where, self.reference_field or self.target_field)
        return Example(
            prompt=self.render_prompt(prompt), target=target, reference=reference, **common
        )
