"""Datasets, tokenisation, batching and partitions, on the real files in ../shared/data."""

import collections

import numpy as np
import pytest

from privtune_ray.checks import check_config
from privtune_ray.config import load_config
from privtune_ray.data import DATASETS, batch_indices, collate, load_split, partition, resolve_data_dir, tokenize_split
from privtune_ray.errors import ConfigError, DataError

# Row counts from shared/data/README.md (squad: our article-disjoint split of its 10,570 dev questions).
EXPECTED_ROWS = {
    ("sst2", "train"): 67349,
    ("sst2", "dev"): 872,
    ("financial_phrasebank", "train"): 3879,
    ("financial_phrasebank", "dev"): 484,
    ("financial_phrasebank", "test"): 483,
    ("blog", "train"): 27862,
    ("blog", "dev"): 2760,
    ("blog", "test"): 2821,
    ("ag_news", "train"): 10001,
    ("ag_news", "dev"): 7600,
    ("trustpilot", "train"): 2032,
    ("trustpilot", "dev"): 2034,
}


@pytest.mark.parametrize("name,split", sorted(EXPECTED_ROWS))
def test_every_dataset_split_loads_with_its_canonical_size(name, split):
    ds = load_split(name, split)
    spec = DATASETS[name]
    assert len(ds) == EXPECTED_ROWS[(name, split)]
    assert {"text", "label", *spec.attributes} <= set(ds.column_names)
    labels = np.asarray(ds["label"])
    assert labels.min() == 0 and labels.max() == spec.num_labels - 1
    assert all(isinstance(t, str) and t for t in ds["text"][:50])


def test_label_and_attribute_counts_match_the_readme():
    assert collections.Counter(load_split("sst2", "dev")["label"]) == {0: 428, 1: 444}
    blog = load_split("blog", "dev")
    assert collections.Counter(blog["gender"]) == {"female": 1139, "male": 1621}
    assert collections.Counter(blog["age_group"]) == {"10s": 639, "20s": 1503, "30s": 618}
    assert collections.Counter(load_split("financial_phrasebank", "dev")["label"]) == {0: 60, 1: 288, 2: 136}


def test_squad_is_split_by_article_without_overlap():
    train, dev = load_split("squad", "train"), load_split("squad", "dev")
    assert len(train) + len(dev) == 10570
    assert not set(train["title"]) & set(dev["title"])
    row = dev[0]
    assert row["text"].startswith("question: ") and row["target"] in row["answers"]


def test_max_samples_is_a_seeded_subset():
    a = load_split("sst2", "train", max_samples=100, seed=3)
    b = load_split("sst2", "train", max_samples=100, seed=3)
    c = load_split("sst2", "train", max_samples=100, seed=4)
    assert len(a) == 100 and a["text"] == b["text"] and a["text"] != c["text"]


def test_missing_data_directory_says_where(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist.*sst2/"):
        load_split("sst2", "dev", data_dir=tmp_path / "nope")
    monkeypatch.setenv("PRIVTUNE_DATA_DIR", str(tmp_path / "also-nope"))
    with pytest.raises(DataError, match="PRIVTUNE_DATA_DIR"):
        load_split("sst2", "dev")


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"file not found at .*sst2/dev\.tsv.*--data-dir"):
        load_split("sst2", "dev", data_dir=tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\ngood film \t1\nbad film \t0\n")
    monkeypatch.setenv("PRIVTUNE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    ds = load_split("sst2", "dev")
    assert ds["text"] == ["good film", "bad film"] and ds["label"] == [1, 0]


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset 'imdb'"):
        load_split("imdb", "train")
    with pytest.raises(DataError, match="no split 'validation'.*'train', 'dev', 'test'"):
        load_split("sst2", "validation")


def test_sst2_test_is_unlabelled_public_text_that_no_run_trains_or_evaluates_on():
    public = load_split("sst2", "test")
    assert len(public) == 1821 and set(public["label"]) == {-1} and all(public["text"])
    for key in ("train_split", "eval_split"):
        with pytest.raises(ConfigError, match=rf"'data.{key}'.*split 'test' has no labels.*\['train', 'dev'\]"):
            check_config(load_config(None, [f"data.{key}=test"]))


def test_hub_fallback_normalises_hub_columns(tmp_path, monkeypatch):
    """The Hub is unreachable here, so ``datasets.load_dataset`` is replaced for this one test."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"idx": [0, 1], "sentence": ["nice ", "awful "], "label": [1, 0]})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_split("sst2", "dev", data_dir=tmp_path)
    assert calls == [("stanfordnlp/sst2", None, "validation")]
    assert ds.column_names == ["text", "label"] and ds["text"] == ["nice", "awful"]
    with pytest.raises(DataError, match="file not found"):
        load_split("sst2", "dev", data_dir=tmp_path, hub_fallback=False)


def test_tokenisation_truncates_and_collate_pads(tokenizer, sst2_dev):
    split = tokenize_split(sst2_dev, tokenizer, max_length=16)
    assert len(split) == 872 and split.lengths.max() == 16
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in split.input_ids)
    batch = collate(split, [0, 1, 2], tokenizer.pad_token_id)
    width = max(split.lengths[:3])
    assert batch.input_ids.shape == (3, width)
    assert batch.attention_mask.sum(1).tolist() == split.lengths[:3].tolist()
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()


def test_length_bucketing_covers_every_sample_once_and_pads_less(tokenizer):
    lengths = tokenize_split(load_split("sst2", "train", max_samples=4000), tokenizer, 64).lengths
    plain = batch_indices(lengths, 32, shuffle=True, bucketing=False, seed=1)
    bucketed = batch_indices(lengths, 32, shuffle=True, bucketing=True, seed=1)
    for batches in (plain, bucketed):
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)
    assert padded(bucketed) < 0.7 * padded(plain)
    again = batch_indices(lengths, 32, shuffle=True, bucketing=True, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(bucketed, again))


LABELS = np.repeat(np.arange(4), [400, 300, 200, 100])


@pytest.mark.parametrize("scheme,params", [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("lognormal", {"sigma": 1.0})])
def test_partitions_are_deterministic_and_exact_covers(scheme, params):
    parts = partition(LABELS, 10, scheme, seed=7, **params)
    again = partition(LABELS, 10, scheme, seed=7, **params)
    other = partition(LABELS, 10, scheme, seed=8, **params)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def _max_class_share(parts):
    return np.mean([np.bincount(LABELS[p], minlength=4).max() / len(p) for p in parts])


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = _max_class_share(partition(LABELS, 10, "dirichlet", seed=0, alpha=0.1))
    mild = _max_class_share(partition(LABELS, 10, "dirichlet", seed=0, alpha=100.0))
    iid = _max_class_share(partition(LABELS, 10, "iid", seed=0))
    assert skewed > 0.7 and abs(mild - iid) < 0.05 and iid < 0.5


def test_lognormal_quantity_skew():
    equal = [len(p) for p in partition(LABELS, 10, "lognormal", seed=0, sigma=0.0)]
    skewed = [len(p) for p in partition(LABELS, 10, "lognormal", seed=0, sigma=1.5)]
    assert equal == [100] * 10
    assert max(skewed) > 3 * min(skewed)


def test_empty_partition_and_bad_parameters_are_errors():
    with pytest.raises(DataError, match="no sample.*raise the Dirichlet alpha"):
        partition(LABELS, 200, "dirichlet", seed=0, alpha=0.01)
    with pytest.raises(DataError, match="cannot fill"):
        partition(LABELS[:5], 10, "iid")
    with pytest.raises(DataError, match="unknown partition scheme"):
        partition(LABELS, 10, "round-robin")
    with pytest.raises(DataError, match="alpha must be > 0"):
        partition(LABELS, 10, "dirichlet", alpha=-1.0)


BAD_FILES = {
    "missing-label-column": (
        b"sentence\tscore\na fine film\t1\n",
        r"no column 'label' \(its columns: sentence, score\)",
    ),
    "empty": (b"", r"holds no rows \(it is empty, or a header line only\)"),
    "header-only": (b"sentence\tlabel\n", r"holds no rows \(it is empty, or a header line only\)"),
    "not-utf8": (b"sentence\tlabel\na fine film\t1\ncaf\xe9 society\t0\n", r"line 3: byte 0xe9 is not UTF-8"),
    "bad-label": (b"sentence\tlabel\na fine film\tgood\n", r"data row 1: unexpected value"),
    "label-out-of-range": (
        b"sentence\tlabel\na fine film\t1\na dull one\t7\n",
        r"data row 2: label 7 is none of the task's 2 classes \(0..1: negative, positive\): fix or drop that row",
    ),
    "negative-label": (b"sentence\tlabel\na fine film\t-1\n", r"data row 1: label -1 is none of the task's 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_broken_dataset_file_is_one_error_naming_it(tmp_path, case):
    content, match = BAD_FILES[case]
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "dev.tsv").write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        load_split("sst2", "dev", tmp_path, hub_fallback=False)
    assert str(tmp_path / "sst2" / "dev.tsv") in str(info.value) and "\n" not in str(info.value)


def test_a_broken_dataset_file_stops_train_before_anything_is_written(tmp_path, capsys):
    from privtune_ray.cli import main

    (tmp_path / "data" / "sst2").mkdir(parents=True)
    for case, says in [("missing-label-column", "no column 'label'"), ("label-out-of-range", "label 7 is none")]:
        for split in ("train", "dev"):
            (tmp_path / "data" / "sst2" / f"{split}.tsv").write_bytes(BAD_FILES[case][0])
        out = tmp_path / "run"
        data = ["--data-dir", str(tmp_path / "data")]
        for command in ("train", "simulate"):
            config = "simulations/sst2_baseline.yaml" if command == "train" else "simulations/sst2_devices.yaml"
            assert main([command, config, *data, "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and says in err[0] and not out.exists(), err


def test_the_registries_load_without_torch():
    """`privtune-ray datasets` and the config checks read DATASETS and PARTITIONERS; batching (torch) loads on use."""
    import subprocess
    import sys

    code = "import sys, privtune_ray.data as d; d.DATASETS, d.PARTITIONERS; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
