"""The grid: its file format and checks (tasks x models x arms x seeds), its cells, the
runs folder's grid.json."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

from seglm.config import EVAL_FIELDS, FIELDS, ConfigError, EvalConfig, TrainConfig, coerce
from seglm.folders import FolderError, hold, ownership, write_owned
from seglm.losses.spec import LossSpec, canonical_loss_name
from seglm.paths import PathNameError, check_inside, check_name
from seglm.runs import GRID_FILE, differences, folder_problem
from seglm.schema import (
    CountList,
    Mapping,
    NumberList,
    Seed,
    Text,
    TextList,
    check_fields,
    check_keys,
    mapping_of,
    read_yaml_file,
)

BASE = "base"
CE = "ce"
DEFAULT_LAMBDA = 0.6
GRID_VERSION = 1
# Fields each cell sets itself: a grid's shared training settings must not set them.
CELL_FIELDS = frozenset(
    {"task", "model", "loss", "seed", "output_dir", "run_name", "overwrite", "resume"}
)
GRID_KEYS = (
    "task",
    "tasks",
    "model",
    "models",
    "losses",
    "lambdas",
    "arms",
    "seeds",
    "train_sizes",
    "base",
    "train",
    "model_train",
    "eval",
    # How to run the grid, not what it is (seglm.cluster): read by seglm compare, not by Grid.
    "launcher",
    "slurm",
)
# Evaluation settings each cell takes from its training config (or that no cell needs): a
# grid's eval block must not set them.
CELL_EVAL_FIELDS = frozenset(
    {"task", "task_options", "data_dir", "trust_remote_code", "adapter", "allow_task_mismatch",
     "overwrite"}
)  # fmt: skip
# Evaluation settings that change speed, not results: a rerun may change them.
EVAL_SPEED_FIELDS = frozenset({"batch_size"})
SUMMARY_HEAD = (
    "task",
    "model",
    "arm",
    "loss",
    "lambda",
    "train_size",
    "seed",
    "status",
    "dir",
    "n",
    "train_s",
    "eval_s",
    "steps",
    "error",
)


ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LOSS_ARM = re.compile(r".+-lam[0-9.e+-]+")


def _seed_count(value: Any) -> Any:
    """A count N of seeds (``3``, ``"3"``) as seeds 0..N-1; a list (``[42, 43]``, ``"42,43"``)
    as it is."""
    if isinstance(value, str) and "," not in value and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"a count of seeds must be >= 1, got {value}")
        return list(range(value))
    return [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value


Seeds = Annotated[list[Seed], BeforeValidator(_seed_count)]


def spec_key(spec: str) -> frozenset[Any]:
    """A loss spec's terms, weights and options, whatever their order or spelling."""
    return LossSpec.parse(spec).identity()


class GridError(ValueError):
    """A grid that cannot run: names the file, key or cell and what was expected."""


# -- the grid ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One training run and its evaluation; ``loss`` is ``base`` for the untrained model and a
    named arm's name when ``spec`` is set."""

    task: str
    model: str
    loss: str
    lam: float | None  # weight of CE: 1 for CE alone, None for the base model and named arms
    seed: int | None  # None for the base model (greedy evaluation needs no seed)
    spec: str | None = None  # a named arm's loss spec
    train_size: int | None = None  # training examples, when the grid sweeps them

    @property
    def is_base(self) -> bool:
        return self.loss == BASE

    @property
    def arm(self) -> str:
        """What a table row compares: ``base``, ``ce-lam1``, ``lovasz-lam0.6``, a named arm."""
        if self.is_base or self.spec is not None:
            return self.loss
        return f"{self.loss}-lam{self.lam:g}"

    @property
    def relative_dir(self) -> Path:
        folder = Path(self.task) / model_slug(self.model)
        if self.train_size is not None:
            folder = folder / f"n{self.train_size}"
        folder = folder / self.arm
        return folder if self.is_base else folder / f"seed{self.seed}"

    @property
    def loss_spec(self) -> str:
        """The TrainConfig loss spec: ``ce=1``, ``ce=0.6,lovasz=0.4`` or a named arm's."""
        if self.spec is not None:
            return self.spec
        return str(LossSpec.mix(self.loss, 1.0 if self.lam is None else self.lam))


def model_slug(model: str) -> str:
    """A folder name for a model: the last part of its id or path, lower case (never ``.`` or
    ``..``: a folder name cannot start or end with a dot)."""
    return re.sub(r"[^a-z0-9.]+", "-", Path(model).name.lower()).strip("-.") or "model"


def cell_folder(root: Path, cell: Cell) -> Path:
    """The folder of ``cell`` under the runs folder ``root``; one that resolves outside it (a
    symbolic link pointing out) is refused."""
    try:
        return check_inside(root, root / cell.relative_dir, "cell folder")
    except PathNameError as error:
        raise GridError(str(error)) from None


@dataclass
class Grid:
    """tasks x models x (losses x λ + named arms) x seeds, with the training and evaluation
    settings every cell shares (``train``: TrainConfig fields, a ``preset`` allowed; ``eval``:
    an :class:`~seglm.config.EvalConfig`, whose task, task options, data folder and trust each
    cell takes from its training config).
    ``model_train`` adds settings for one model (e.g. its LoRA target modules); ``base`` also
    evaluates each untrained model. ``arms`` maps a name to a loss spec of its own."""

    tasks: TextList
    models: TextList
    losses: TextList
    lambdas: NumberList = field(default_factory=lambda: [DEFAULT_LAMBDA])
    arms: mapping_of(Text) = field(default_factory=dict)
    seeds: Seeds = field(default_factory=lambda: [0])
    train_sizes: CountList = field(default_factory=list)
    base: bool = False
    train: Mapping = field(default_factory=dict)
    model_train: mapping_of(Mapping) = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        try:
            check_fields(self, noun="key")
        except ConfigError as error:
            raise GridError(str(error)) from None
        for name in ("tasks", "models", "seeds"):
            if not getattr(self, name):
                raise GridError(f"empty grid: '{name}' lists nothing")
        if not self.losses and not self.arms:
            raise GridError("empty grid: 'losses' and 'arms' list nothing")
        try:
            self.losses = distinct(canonical_loss_name(loss) for loss in self.losses)
        except ValueError as error:
            raise GridError(f"losses: {error}") from None
        self.tasks = distinct(task.lower() for task in self.tasks)
        self.models = distinct(self.models)
        try:
            for task in self.tasks:
                check_name(task, "tasks: task")
        except PathNameError as error:
            raise GridError(str(error)) from None
        self.seeds = distinct(self.seeds)
        self.lambdas = distinct(self.lambdas)
        self.train_sizes = distinct(self.train_sizes)
        self._check_values()
        self.arms = self._checked_arms()
        self.train = _check_train_settings(self.train, "train")
        if self.train_sizes and "train_limit" in self.train:
            raise GridError(
                "train: train_limit is set by each cell when the grid has train_sizes; "
                "remove one of them"
            )
        for model, settings in self.model_train.items():
            if model not in self.models:
                raise GridError(f"model_train: {model!r} is not one of the grid's models")
            where = f"model_train: {model}"
            self.model_train[model] = _check_train_settings(settings, where)
        defaults = _defaults(EvalConfig)
        fixed = sorted(
            name for name in CELL_EVAL_FIELDS if getattr(self.eval, name) != defaults[name]
        )
        if fixed:
            raise GridError(
                f"eval: {', '.join(fixed)} is set by each cell (from its training settings); "
                "remove it from the evaluation settings"
            )

    def _check_values(self) -> None:
        if any(loss != CE for loss in self.losses) and not self.lambdas:
            raise GridError("empty grid: 'lambdas' lists nothing (losses other than ce need λ)")
        for lam in self.lambdas:
            if not 0 <= lam < 1:
                raise GridError(
                    f"lambdas: λ is the weight of CE, in [0, 1); got {lam:g} "
                    "(λ = 1 is CE alone: list 'ce' in losses)"
                )
        slugs: dict[str, str] = {}
        for model in self.models:
            other = slugs.setdefault(model_slug(model), model)
            if other != model:
                raise GridError(
                    f"models {other!r} and {model!r} would share the folder "
                    f"{model_slug(model)!r}; rename one of the folders"
                )

    def _checked_arms(self) -> dict[str, str]:
        """Named arms with canonical specs; a name or a loss that another arm has is refused."""
        taken = {
            spec_key(cell.loss_spec): cell.arm
            for cell in self.cells(named=False)
            if cell.seed == self.seeds[0]
        }
        arms: dict[str, str] = {}
        for name, spec in self.arms.items():
            if not ARM_NAME.fullmatch(str(name)) or name == BASE or LOSS_ARM.fullmatch(name):
                raise GridError(
                    f"arms: {name!r} is not a usable arm name (letters, digits, '.', '_' and "
                    f"'-'; not {BASE!r} and not LOSS-lamλ, which names the losses x lambdas arms)"
                )
            try:
                canonical = str(LossSpec.parse(spec))
            except ValueError as error:
                raise GridError(f"arms: {name}: {error}") from None
            other = taken.setdefault(spec_key(canonical), name)
            if other != name:
                raise GridError(f"arms: {name} trains the same loss as the arm {other!r}")
            arms[name] = canonical
        return arms

    def cells(self, named: bool = True) -> list[Cell]:
        """Every cell, seed by seed: an interrupted grid has whole seeds to compare."""
        cells: list[Cell] = []
        for task in self.tasks:
            for model in self.models:
                if self.base:
                    cells.append(Cell(task, model, BASE, None, None))
                for seed in self.seeds:
                    for size in self.train_sizes or [None]:
                        cells.extend(self._arm_cells(task, model, seed, size, named))
        return cells

    def _arm_cells(
        self, task: str, model: str, seed: int, size: int | None, named: bool
    ) -> list[Cell]:
        """CE and the named arms (the baselines, usually) first, then the losses at each λ."""
        losses = sorted(self.losses, key=lambda loss: loss != CE)
        cells = [Cell(task, model, CE, 1.0, seed, train_size=size)] if CE in losses else []
        if named:
            cells.extend(
                Cell(task, model, name, None, seed, spec, size) for name, spec in self.arms.items()
            )
        for loss in (loss for loss in losses if loss != CE):
            cells.extend(
                Cell(task, model, loss, lam, seed, train_size=size) for lam in self.lambdas
            )
        return cells

    def identity(self) -> dict[str, Any]:
        """What every cell shares; a rerun into the same folder must have the same."""
        return {
            "tasks": self.tasks,
            "models": self.models,
            "train": _resolved_train(self.train, self.tasks[0], self.models[0]),
            "model_train": self.model_train,
            "eval": {
                key: value
                for key, value in dataclasses.asdict(self.eval).items()
                if key not in CELL_EVAL_FIELDS | EVAL_SPEED_FIELDS
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": GRID_VERSION,
            **self.identity(),
            "losses": self.losses,
            "lambdas": self.lambdas,
            "arms": self.arms,
            "seeds": self.seeds,
            "train_sizes": self.train_sizes,
            "base": self.base,
            "settings": {"train": self.train, "eval": dataclasses.asdict(self.eval)},
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str) -> Grid:
        """A grid from a grid file's mapping (``task``/``model`` may be single names, ``seeds``
        a count N for seeds 0..N-1)."""
        unknown = [key for key in values if key not in GRID_KEYS]
        if unknown:
            raise GridError(
                f"{where}: unknown key {unknown[0]!r}; expected some of {', '.join(GRID_KEYS)}"
            )
        try:
            return cls(
                tasks=_names(values, "task", "tasks", where),
                models=_names(values, "model", "models", where),
                losses=values.get("losses", []),
                lambdas=values.get("lambdas", [DEFAULT_LAMBDA]),
                arms=values.get("arms"),
                seeds=values.get("seeds", 1),
                train_sizes=values.get("train_sizes"),
                base=values.get("base", False),
                train=values.get("train"),
                model_train=values.get("model_train"),
                eval=_eval_config(values.get("eval"), where),
            )
        except GridError as error:
            message = str(error)
            raise GridError(
                message if message.startswith(where) else f"{where}: {message}"
            ) from None


def distinct(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _check_train_settings(train: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        check_keys(train, FIELDS, where)
    except ConfigError as error:
        raise GridError(str(error)) from None
    fixed = sorted(CELL_FIELDS.intersection(train))
    if fixed:
        raise GridError(
            f"{where}: {', '.join(fixed)} is set by each cell (from tasks, models, losses, "
            "lambdas, seeds and the runs folder); remove it from the shared settings"
        )
    try:
        return {key: coerce(key, value, where) for key, value in train.items()}
    except ConfigError as error:
        raise GridError(str(error)) from None


def _resolved_train(train: dict[str, Any], task: str, model: str) -> dict[str, Any]:
    """The shared training settings after presets and defaults (cell fields left out)."""
    from seglm.config import resolve_config

    try:
        config = resolve_config(overrides={**train, "task": task, "model": model})
    except ConfigError as error:
        raise GridError(f"train: {error}") from None
    identity = config.identity()
    return {k: v for k, v in identity.items() if k not in CELL_FIELDS | {"preset"}}


def _names(values: dict[str, Any], single: str, plural: str, where: str) -> Any:
    if single in values and plural in values:
        raise GridError(f"{where}: give {single!r} or {plural!r}, not both")
    if single not in values and plural not in values:
        raise GridError(f"{where}: missing {plural!r} (or {single!r})")
    return values.get(plural, values.get(single))


def _eval_config(value: Any, where: str) -> EvalConfig:
    values = {} if value is None else value
    if not isinstance(values, dict):
        raise GridError(f"{where}: eval: expected a mapping of settings, got {value!r}")
    try:
        check_keys(values, [name for name in EVAL_FIELDS if name not in CELL_EVAL_FIELDS], "eval")
        return EvalConfig(**values)
    except ConfigError as error:
        message = str(error)
        raise GridError(message if message.startswith("eval") else f"eval: {message}") from None


def load_grid(path: str | os.PathLike[str]) -> Grid:
    """A grid from a YAML file (docs/experiments.md shows the format)."""
    return Grid.from_dict(read_grid_values(path), str(path))


def read_grid_values(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A grid file's mapping, not yet checked."""
    path = Path(path)
    try:
        values = read_yaml_file(path, "grid file")
    except ConfigError as error:
        raise GridError(str(error)) from None
    if not isinstance(values, dict):
        raise GridError(f"{path}: expected a mapping (tasks, models, losses, ...)")
    return values


# -- the runs folder ---------------------------------------------------------------------------


def read_grid_file(root: Path) -> dict[str, Any]:
    path = root / GRID_FILE
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise GridError(f"{root} holds no grid ({GRID_FILE}: {error.strerror})") from None
    except ValueError as error:
        raise GridError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise GridError(f"{path}: not a seglm grid file (expected a JSON object)")
    missing = [
        key for key in ("tasks", "models", "losses", "lambdas", "seeds") if key not in values
    ]
    if missing:
        raise GridError(f"{path}: not a seglm grid file (missing {', '.join(missing)})")
    return values


def grid_cells(values: dict[str, Any]) -> list[Cell]:
    """The cells a grid file describes."""
    grid = Grid(
        tasks=values["tasks"],
        models=values["models"],
        losses=values["losses"],
        lambdas=values["lambdas"],
        arms=values.get("arms", {}),
        seeds=values["seeds"],
        train_sizes=values.get("train_sizes", []),
        base=values.get("base", False),
    )
    return grid.cells()


# Grid-wide files (grid.json, the summary) are written under the runs folder's lock, held for
# the write only: several processes (shards) run one grid, each holding the cells it runs.
ROOT_WAIT_S = 60.0


def holding_root(root: Path) -> Any:
    """The runs folder held for a short write; another process's write is waited for."""
    return hold(root, "grid", wait=ROOT_WAIT_S)


def prepare_root(grid: Grid, root: Path) -> dict[str, Any]:
    """Write grid.json, or check that the folder's grid is compatible and extend its axes
    (more losses, λ or seeds); an incompatible grid is refused naming the differing keys."""
    current = grid.to_dict()
    problem = folder_problem(root)
    if problem:
        raise GridError(f"runs folder: {problem}; choose another --out")
    if not is_main_process():  # rank 0 checks and writes the folder
        return current
    try:
        with holding_root(root):
            return _prepare_held_root(grid, root, current)
    except FolderError as error:
        raise GridError(f"runs folder: {error}") from None


def _prepare_held_root(grid: Grid, root: Path, current: dict[str, Any]) -> dict[str, Any]:
    path = root / GRID_FILE
    owned = ownership(root)
    if path.is_file() and owned is not None and owned.owns(GRID_FILE):
        previous = read_grid_file(root)
        identity = {key: current[key] for key in grid.identity()}
        changed = differences(_as_now(previous), identity)
        if changed:
            raise GridError(
                f"{root} holds another grid ({'; '.join(changed)}); a grid may only be extended "
                "with more losses, lambdas or seeds: use another runs folder"
            )
        for axis in ("losses", "lambdas", "seeds", "train_sizes"):
            current[axis] = distinct([*previous.get(axis, []), *current[axis]])
        current["arms"] = _merged_arms(previous.get("arms", {}), current["arms"], root)
        current["base"] = bool(previous.get("base")) or grid.base
    elif owned is not None and (owned.folders or any((root / f).exists() for f in owned.files)):
        raise GridError(
            f"{root} holds seglm files but no {GRID_FILE} (not a runs folder): choose a new or "
            "empty runs folder"
        )
    write_owned(root, GRID_FILE, json.dumps(current, indent=2) + "\n")
    return current


def _as_now(previous: dict[str, Any]) -> dict[str, Any]:
    """The identity a grid.json holds, as this version writes it: a training or evaluation
    setting added since that grid.json was written was at its default there."""
    train, evaluation = _defaults(TrainConfig), _defaults(EvalConfig)
    return {
        **previous,
        "train": {**train, **(previous.get("train") or {})},
        "eval": {**evaluation, **(previous.get("eval") or {})},
    }


def _defaults(cls: type) -> dict[str, Any]:
    """Each field of a settings dataclass with its default."""
    return {
        item.name: item.default_factory() if item.default is dataclasses.MISSING else item.default  # type: ignore[misc]
        for item in dataclasses.fields(cls)
    }


def _merged_arms(previous: dict[str, str], current: dict[str, str], root: Path) -> dict[str, str]:
    changed = [name for name in current if previous.get(name, current[name]) != current[name]]
    if changed:
        name = changed[0]
        raise GridError(
            f"{root}: arm {name!r} trained {previous[name]!r} there, not {current[name]!r}; "
            "give the new loss another arm name"
        )
    return {**previous, **current}


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
