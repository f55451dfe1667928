"""The datasets privtune-ray knows, loaded with the ``datasets`` library from a data directory.

Every loaded split has the columns ``text`` and ``label`` (an int class id) for classification
tasks, ``text`` and ``target`` for generation, plus the private attributes a dataset carries
(e.g. Blog ``gender``/``age_group``), kept as strings for the attribute-inference attacks.

The data directory is, in order: the ``data_dir`` argument (config ``data.data_dir`` or
``--data-dir``), ``$PRIVTUNE_DATA_DIR``, then ``../shared/data`` beside the project. Its
layout and provenance are described in that folder's README.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

Row = dict


@dataclass(frozen=True)
class HubSource:
    """The public Hub copy used when the local files are missing and the user is online."""

    path: str
    config: str | None
    splits: dict[str, str]  # our split name -> Hub split name
    to_example: Callable[[Row], Row]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    folder: str
    files: dict[str, str]  # split -> file inside ``folder``
    task: str  # "classification" or "generation"
    to_example: Callable[[Row], Row]  # raw row -> normalised columns
    label_names: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()  # private attributes (strings) kept for attribute inference
    keep: Callable[[str, Row], bool] | None = None  # split filter, for datasets split from one file
    unlabelled: tuple[str, ...] = ()  # splits whose file has no label column (label -1): public text, never trained on
    hub: HubSource | None = None
    notes: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def splits(self) -> list[str]:
        return list(self.files)


# --------------------------------------------------------------------------- per-dataset rows


FP_LABELS = ("negative", "neutral", "positive")
BLOG_TOPICS = (
    "Student",
    "Technology",
    "Arts",
    "Education",
    "Communications-Media",
    "Internet",
    "Non-Profit",
    "Engineering",
    "Law",
    "Publishing",
)
AG_LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _sst2(row: Row) -> Row:
    return {"text": row["sentence"].strip(), "label": int(row["label"])}


def _fp(row: Row) -> Row:
    return {"text": row["sentence"], "label": FP_LABELS.index(row["label"])}


def _blog(row: Row) -> Row:
    return {
        "text": row["text"],
        "label": BLOG_TOPICS.index(row["topic"]),
        "gender": row["gender"],
        "age_group": row["age_group"],
    }


def _ag(row: Row) -> Row:
    return {"text": row["description"], "label": int(row["label_id"]) - 1}


def _trustpilot(row: Row) -> Row:
    return {
        "text": row["text"],
        "label": int(row["rating"]) - 1,
        "gender": row["gender"],
        "born_before_1960": str(row["born_before_1960"]),
    }


def _squad(row: Row) -> Row:
    return {
        "text": f"question: {row['question']} context: {row['context']}",
        "target": row["answers"][0],
        "answers": list(row["answers"]),
        "title": row["title"],
    }


def _squad_by_title(split: str, row: Row) -> bool:
    """Article-disjoint split of the SQuAD dev file: 1 in 5 titles (by sha256) is ``dev``."""
    is_dev = int(hashlib.sha256(row["title"].encode()).hexdigest(), 16) % 5 == 0
    return is_dev if split == "dev" else not is_dev


def _hub_sst2(row: Row) -> Row:
    return {"text": row["sentence"].strip(), "label": int(row["label"])}


def _hub_fp(row: Row) -> Row:
    return {"text": row["sentence"], "label": int(row["label"])}


def _hub_ag(row: Row) -> Row:
    return {"text": row["text"], "label": int(row["label"])}


def _hub_squad(row: Row) -> Row:
    answers = row["answers"]["text"]
    return {
        "text": f"question: {row['question']} context: {row['context']}",
        "target": answers[0],
        "answers": list(answers),
        "title": row["title"],
    }


DATASETS: dict[str, DatasetSpec] = {
    "sst2": DatasetSpec(
        name="sst2",
        description="GLUE SST-2 binary sentiment (67,349 train / 872 dev / 1,821 unlabelled test)",
        folder="sst2",
        files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
        unlabelled=("test",),  # GLUE keeps the test labels hidden: public in-domain text (train.warm_start)
        task="classification",
        to_example=_sst2,
        label_names=("negative", "positive"),
        hub=HubSource("stanfordnlp/sst2", None, {"train": "train", "dev": "validation", "test": "test"}, _hub_sst2),
    ),
    "financial_phrasebank": DatasetSpec(
        name="financial_phrasebank",
        description="Financial PhraseBank 50Agree, 3-class sentiment, stratified 80/10/10 split",
        folder="financial_phrasebank",
        files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
        task="classification",
        to_example=_fp,
        label_names=FP_LABELS,
        hub=None,  # the Hub copy has a single split with no dev/test: no faithful fallback
    ),
    "blog": DatasetSpec(
        name="blog",
        description="Blog Authorship Corpus subset: 10-topic task, author gender and age group as private attributes",
        folder="blog",
        files={"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"},
        task="classification",
        to_example=_blog,
        label_names=BLOG_TOPICS,
        attributes=("gender", "age_group"),
    ),
    "ag_news": DatasetSpec(
        name="ag_news",
        description="AG News 4-class topic: 10,001-row train subset; the official 7,600-row test set as dev",
        folder="ag_news",
        files={"train": "train_subset.tsv", "dev": "test.tsv"},
        task="classification",
        to_example=_ag,
        label_names=AG_LABELS,
        hub=HubSource("fancyzhx/ag_news", None, {"train": "train", "dev": "test"}, _hub_ag),
        notes="text is the description only (the train subset has no titles)",
    ),
    "trustpilot": DatasetSpec(
        name="trustpilot",
        description="TrustPilot reviews: 5-class rating task, author gender and birth before 1960 as private attributes",
        folder="trustpilot",
        files={"train": "dev.tsv", "dev": "test.tsv"},
        task="classification",
        to_example=_trustpilot,
        label_names=("1", "2", "3", "4", "5"),
        attributes=("gender", "born_before_1960"),
        notes="the original train file is not available: its dev file serves as train, its test file as dev",
    ),
    "squad": DatasetSpec(
        name="squad",
        description="SQuAD v1.1 dev questions, split by article title into train (4/5) and dev (1/5)",
        folder="squad",
        files={"train": "dev.jsonl", "dev": "dev.jsonl"},
        task="generation",
        to_example=_squad,
        keep=_squad_by_title,
        hub=HubSource("rajpurkar/squad", None, {"train": "train", "dev": "validation"}, _hub_squad),
    ),
}


# --------------------------------------------------------------------------- loading


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def default_data_dirs() -> list[Path]:
    """Where ``../shared/data`` may be: beside the working directory, or beside the project checkout."""
    project_root = Path(__file__).resolve().parents[2]
    return [Path.cwd().parent / "shared" / "data", project_root.parent / "shared" / "data"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data directory to read from; ``None`` when no default exists (then only the Hub can help)."""
    for source, value in (
        ("data.data_dir / --data-dir", data_dir),
        ("PRIVTUNE_DATA_DIR", os.environ.get("PRIVTUNE_DATA_DIR")),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(
                    f"data directory {str(path)!r} (from {source}) does not exist: point it at the folder "
                    f"holding sst2/, blog/, ... (the layout of shared/data/README.md)"
                )
            return path
    return next((p.resolve() for p in default_data_dirs() if p.is_dir()), None)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    hub_fallback: bool = True,
    max_samples: int | None = None,
    seed: int = 0,
):
    """Load one split as a ``datasets.Dataset`` with normalised columns (see the module docstring).

    ``max_samples`` keeps a seeded random subset of that many rows.
    """
    spec = get_spec(name)
    if split not in spec.files:
        raise DataError(f"dataset {name!r} has no split {split!r}; its splits are {spec.splits}")
    root = resolve_data_dir(data_dir)
    path = root / spec.folder / spec.files[split] if root is not None else None
    if path is not None and path.is_file():
        ds = _load_local(spec, split, path)
    elif hub_fallback and spec.hub is not None and not _offline():
        ds = _load_hub(spec, split, path)
    else:
        where = (
            str(path)
            if path is not None
            else " or ".join(str(p / spec.folder / spec.files[split]) for p in default_data_dirs())
        )
        raise DataError(
            f"dataset {name!r} split {split!r}: file not found at {where}. Put the data there (see "
            f"shared/data/README.md), or point data.data_dir, --data-dir or PRIVTUNE_DATA_DIR at the folder "
            f"holding {spec.folder}/"
            + ("" if spec.hub is None else f"; online, unset HF_HUB_OFFLINE to use {spec.hub.path}")
        )
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} split {split!r} is empty: check the file at {path}")
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    return ds


def _normalise(
    ds,
    to_example: Callable[[Row], Row],
    keep: Callable[[Row], bool] | None = None,
    source: str = "",
    classes: tuple[str, ...] = (),
):
    """Raw rows -> normalised rows, as a new in-memory ``datasets.Dataset`` (types inferred afresh). A missing
    column, a value of the wrong kind or a label outside ``classes`` (a labelled classification split's class names)
    is a :class:`DataError` naming the file (``source``) and the row."""
    import datasets  # heavy (pyarrow): loaded on first read, not by the registry checks

    rows = []
    for i, row in enumerate(ds):
        try:
            if keep is None or keep(row):
                example = to_example(row)
                if classes and not 0 <= example["label"] < len(classes):
                    raise DataError(
                        f"dataset file {source}, data row {i + 1}: label {example['label']} is none of the task's "
                        f"{len(classes)} classes (0..{len(classes) - 1}: {', '.join(classes)}): fix or drop that row"
                    )
                rows.append(example)
        except KeyError as exc:
            raise DataError(
                f"dataset file {source}: no column {exc.args[0]!r} (its columns: {', '.join(ds.column_names)}): "
                f"restore the file (shared/data/README.md gives each dataset's columns)"
            ) from None
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"dataset file {source}, data row {i + 1}: unexpected value ({exc}): fix or drop that row"
            ) from None
    return datasets.Dataset.from_list(rows)


def _check_utf8(path: Path) -> None:
    """A dataset file must be UTF-8 text: a stray byte is one error naming its line, not a parser's traceback."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"dataset file {path}, line {line}: byte {raw[exc.start]:#04x} is not UTF-8: save the file as "
            f"UTF-8 text, or restore it"
        ) from None


def _load_local(spec: DatasetSpec, split: str, path: Path):
    import datasets  # heavy (pyarrow): loaded on first read, not by the registry checks

    _check_utf8(path)
    datasets.disable_progress_bars()  # a local file loads in a second: no "Generating train split" bars
    kind = "JSON lines" if path.suffix == ".jsonl" else "a tab-separated table with a header line"
    try:
        if path.suffix == ".jsonl":
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:  # TSV with one header line and no quoting (shared/data/README.md)
            ds = datasets.load_dataset(
                "csv", data_files=str(path), split="train", sep="\t", quoting=3, keep_default_na=False
            )
    except Exception as exc:  # pyarrow, pandas and datasets each raise their own parse errors
        if path.stat().st_size == 0 or "corresponds to no data" in str(exc) or "No columns to parse" in str(exc):
            raise DataError(
                f"dataset file {path} holds no rows (it is empty, or a header line only): restore it"
            ) from None
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"dataset file {path} cannot be read as {kind} ({type(exc).__name__}: {first}): fix or restore it"
        ) from None
    if len(ds) == 0:
        raise DataError(f"dataset file {path} holds no rows (it is empty, or a header line only): restore it")
    keep_row = spec.keep
    keep = (lambda row: keep_row(split, row)) if keep_row is not None else None
    to_example = spec.to_example
    classes = spec.label_names if spec.task == "classification" else ()
    if split in spec.unlabelled:
        to_example = lambda row: spec.to_example({"label": -1, **row})  # noqa: E731
        classes = ()
    return _normalise(ds, to_example, keep, str(path), classes)


def _load_hub(spec: DatasetSpec, split: str, missing: Path | None):
    import datasets  # heavy (pyarrow): loaded on first read, not by the registry checks

    hub = spec.hub
    assert hub is not None  # the caller loads from the Hub only where the spec has a Hub copy
    try:
        ds = datasets.load_dataset(hub.path, hub.config, split=hub.splits[split])
    except Exception as exc:  # network, auth, or a renamed dataset: one clear message
        raise DataError(
            f"dataset {spec.name!r}: local file {missing} not found and the Hub copy {hub.path!r} failed to load "
            f"({exc.__class__.__name__}: {exc}). Point data.data_dir at the local data (shared/data/README.md)."
        ) from exc
    return _normalise(ds, hub.to_example)
