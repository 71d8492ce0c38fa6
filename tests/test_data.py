import json

import numpy as np
import pytest

from cooperllm.data import DataError, load_dataset, parse_partition, partition, public_split


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_sst2_tsv(sst2_dir):
    ds = load_dataset(sst2_dir / "test.tsv", label_names=("negative", "positive"))
    assert len(ds) == 872
    assert int(ds.labels.sum()) == 444  # the README's count of positives
    assert ds.texts[0].startswith("it 's a charming")


def test_reads_jsonl_with_label_names(tmp_path):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "fine", "label": 1}]
    p = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(p, label_names=("neg", "pos"))
    assert ds.texts == ["great", "awful", "fine"]
    assert ds.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("bad.tsv", "sentence\tlabel\ngood\t1\nbad row without tab\n", ":3:"),
        ("lab.tsv", "sentence\tlabel\ngood\t1\nmeh\tmaybe\n", ":3:"),
        ("neg.tsv", "sentence\tlabel\ngood\t-1\n", ":2:"),
        ("empty.tsv", "sentence\tlabel\n\t1\n", ":2:"),
        ("bad.jsonl", '{"text": "a", "label": 0}\n{not json\n', ":2:"),
        ("arr.jsonl", "[1, 2]\n", ":1:"),
        ("nocol.jsonl", '{"words": "a", "label": 0}\n', ":1:"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, name, text, where):
    p = _write(tmp_path, name, text)
    with pytest.raises(DataError) as err:
        load_dataset(p, label_names=("neg", "pos"))
    assert name in str(err.value) and where in str(err.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_dataset(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="unsupported"):
        load_dataset(_write(tmp_path, "x.parquet", "x"))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:100"])
def test_partitions_are_disjoint_and_cover_everything(sst2_dir, spec):
    ds = load_dataset(sst2_dir / "dev.tsv")
    parts = partition(ds, 20, spec, seed=3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(ds) and len(np.unique(allidx)) == len(ds)
    assert all(len(p) > 0 for p in parts) or spec == "dirichlet:0.5"
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(ds, 20, spec, seed=3), strict=True))


def test_dirichlet_small_beta_skews_labels(sst2_dir):
    ds = load_dataset(sst2_dir / "dev.tsv")
    skewed = [ds.labels[p].mean() for p in partition(ds, 20, "dirichlet:0.1", seed=0) if len(p) > 20]
    iid = [ds.labels[p].mean() for p in partition(ds, 20, "iid", seed=0)]
    assert np.std(skewed) > 3 * np.std(iid)


def test_partition_spec_errors():
    with pytest.raises(ValueError):
        parse_partition("dirichlet:abc")
    with pytest.raises(ValueError):
        parse_partition("shards")


def test_public_split_restricts_classes_and_samples(sst2_dir):
    ds = load_dataset(sst2_dir / "dev.tsv")
    pub = public_split(ds, n=100, seed=1, classes=[1])
    assert len(pub) == 100 and set(pub.labels.tolist()) == {1}


NEWS = "".join(
    f"{text}\t{label}\n"
    for text, label in [
        ("stocks fall as rates rise", "business"),
        ("team wins the final in extra time", "sports"),
        ("new chip doubles battery life", "tech"),
        ("leaders meet to discuss the treaty", "world"),
        ("bank profits beat forecasts", "business"),
        ("striker signs a three year deal", "sports"),
    ]
)


def test_headerless_tsv_of_string_labels_is_detected(tmp_path):
    ds = load_dataset(_write(tmp_path, "news.tsv", NEWS))
    assert ds.label_names == ("business", "sports", "tech", "world")  # sorted: the same file, the same indices
    assert ds.texts[0] == "stocks fall as rates rise" and ds.labels.tolist() == [0, 1, 2, 3, 0, 1]
    flipped = "".join(f"{label}\t{text}\n" for text, label in (r.split("\t") for r in NEWS.splitlines()))
    assert load_dataset(_write(tmp_path, "flipped.tsv", flipped)).labels.tolist() == ds.labels.tolist()


def test_csv_with_quoted_commas_and_a_header(tmp_path):
    p = _write(tmp_path, "d.csv", 'text,label\n"fine, if slow",pos\n"dull, long, loud",neg\nsharp,pos\n')
    ds = load_dataset(p)
    assert ds.texts == ["fine, if slow", "dull, long, loud", "sharp"]
    assert ds.label_names == ("neg", "pos") and ds.labels.tolist() == [1, 0, 1]


def test_columns_by_index_without_a_header(tmp_path):
    p = _write(tmp_path, "d.tsv", "a\tx\tgood one\nb\ty\tbad one\n")
    ds = load_dataset(p, text_column="2", label_column="0", header=False)
    assert ds.texts == ["good one", "bad one"] and ds.label_names == ("a", "b")


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "expected"),
    [
        ("ambiguous.tsv", "good movie\tpos\nbad film\tneg\n", {}, "--no-header"),
        ("unquoted.csv", "text,label\nfine, if slow,pos\n", {}, "must be quoted"),
        ("empty.tsv", "", {}, "empty file"),
        ("blank.jsonl", "\n\n", {}, "empty file"),
        ("header.tsv", "title\tgenre\ngood\tpos\n", {}, "--text-column"),
        ("classes.tsv", NEWS, {"label_names": ("business", "sports")}, "not one of the 2 classes"),
        ("single.tsv", "good\tpos\nfine\tpos\nnice\tpos\n", {}, "one class only"),
        ("index.tsv", NEWS, {"text_column": "5", "header": False}, "--text-column"),
    ],
)
def test_bad_files_get_a_short_error_naming_the_fix(tmp_path, name, text, kwargs, expected):
    p = _write(tmp_path, name, text)
    with pytest.raises(DataError) as err:
        load_dataset(p, **kwargs)
    message = str(err.value)
    assert expected in message and name in message
    assert message.count("\n") <= 1  # one or two lines


def test_known_classes_settle_a_short_headerless_file(tmp_path):
    """Two rows cannot show which column repeats; an artifact's class names can (device and test files)."""
    p = _write(tmp_path, "short.tsv", "sun all week\tsports\nrates rise\tbusiness\n")
    with pytest.raises(DataError, match="--no-header"):
        load_dataset(p)
    ds = load_dataset(p, label_names=("business", "sports", "tech", "world"))
    assert ds.texts == ["sun all week", "rates rise"] and ds.labels.tolist() == [1, 0]


def test_integer_labels_become_the_classes_the_file_uses(tmp_path):
    rows = "".join(f"headline number {i}\t{1 + i % 4}\n" for i in range(12))
    ds = load_dataset(_write(tmp_path, "one_based.tsv", rows))
    assert ds.label_names == ("1", "2", "3", "4") and ds.labels.tolist()[:4] == [0, 1, 2, 3]
