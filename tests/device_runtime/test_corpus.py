"""The device's data as token ids: tokenized in a child process, cached, rebuilt when damaged, errors kept readable."""

import numpy as np
import pytest

from cooperllm.data import DataError
from cooperllm.manifest import read_manifest
from cooperllm.tokenization import PromptEncoder
from device_runtime.corpus import CorpusSource, load_corpus


@pytest.fixture()
def setup(tiny_artifacts, tmp_path):
    m = read_manifest(tiny_artifacts)
    return tiny_artifacts, m, m.graphs[0].seq_len, tmp_path / "cache"


def test_child_tokenization_matches_in_process_and_is_cached(setup, toy_tsv, toy_dataset):
    folder, m, seq_len, cache = setup
    corpus = load_corpus(folder, m, CorpusSource(str(toy_tsv)), seq_len, cache)
    want = PromptEncoder(folder / m.tokenizer_file, m.task, seq_len).tokenize(toy_dataset)
    for field in ("ids", "offsets", "labels"):
        np.testing.assert_array_equal(getattr(corpus, field), getattr(want, field))
    assert (corpus.seq_len, corpus.pad_id) == (want.seq_len, want.pad_id)
    (cached,) = cache.glob("corpus-*.safetensors")
    stamp = cached.stat().st_mtime_ns
    again = load_corpus(folder, m, CorpusSource(str(toy_tsv)), seq_len, cache)
    assert cached.stat().st_mtime_ns == stamp  # read back, not re-tokenized
    np.testing.assert_array_equal(again.ids, corpus.ids)
    limited = load_corpus(folder, m, CorpusSource(str(toy_tsv), limit=3), seq_len, cache)
    assert len(limited) == 3 and len(list(cache.glob("corpus-*.safetensors"))) == 2  # the limit is in the key


def test_a_damaged_cache_is_rebuilt_not_trusted(setup, toy_tsv):
    folder, m, seq_len, cache = setup
    good = load_corpus(folder, m, CorpusSource(str(toy_tsv)), seq_len, cache)
    (cached,) = cache.glob("corpus-*.safetensors")
    cached.write_bytes(cached.read_bytes()[:-7])  # truncated
    rebuilt = load_corpus(folder, m, CorpusSource(str(toy_tsv)), seq_len, cache)
    np.testing.assert_array_equal(rebuilt.ids, good.ids)


def test_bad_data_gives_the_readers_error(setup, tmp_path):
    folder, m, seq_len, cache = setup
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na fine film\tmaybe\n")
    with pytest.raises(DataError, match="bad.tsv"):
        load_corpus(folder, m, CorpusSource(str(bad)), seq_len, cache)
    with pytest.raises(DataError, match="no such data file"):
        load_corpus(folder, m, CorpusSource(str(tmp_path / "missing.tsv")), seq_len, cache)
    assert not list(cache.glob("*.tmp"))
