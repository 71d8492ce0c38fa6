import pytest

from cooperllm.models import TOKENIZER_FILE
from cooperllm.tasks import SEQ_CLS, TaskSpec
from cooperllm.tokenization import PromptEncoder


def test_left_padding_keeps_prompt_end_last(tiny_model_dir):
    enc = PromptEncoder(tiny_model_dir / TOKENIZER_FILE, TaskSpec(), seq_len=32)
    batch = enc.encode(["good", "a much longer review of a film that goes on and on " * 5], [1, 0])
    suffix = enc.tokenizer.encode("\nSentiment:", add_special_tokens=False).ids
    for row, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
        assert row[-len(suffix) :].tolist() == suffix  # the template's end survives truncation
        first = int(mask.argmax())
        assert mask[first:].all() and not mask[:first].any()
    assert batch.attention_mask[1].all()  # truncated to exactly seq_len
    assert batch.input_ids.dtype.name == "int64" and batch.labels.tolist() == [1, 0]


def test_label_tokens_are_distinct(tiny_model_dir):
    enc = PromptEncoder(tiny_model_dir / TOKENIZER_FILE, TaskSpec(), seq_len=16)
    assert len(set(enc.label_token_ids)) == 2


def test_bad_settings_are_refused(tiny_model_dir):
    tok = tiny_model_dir / TOKENIZER_FILE
    with pytest.raises(ValueError, match="seq_len"):
        PromptEncoder(tok, TaskSpec(), seq_len=0)
    with pytest.raises(ValueError, match="no room"):
        PromptEncoder(tok, TaskSpec(), seq_len=3)
    with pytest.raises(ValueError, match="share a first token"):
        PromptEncoder(tok, TaskSpec(label_words=(" negative", " negatively")), seq_len=16)
    with pytest.raises(ValueError, match="text"):
        TaskSpec(template="no placeholder")
    with pytest.raises(ValueError, match="mode"):
        TaskSpec(mode="regression")
    assert TaskSpec(mode=SEQ_CLS).num_classes == 2


def test_tokenized_corpus_gives_the_batches_encode_gives(tiny_model_dir):
    import numpy as np

    from cooperllm.data import Dataset

    enc = PromptEncoder(tiny_model_dir / TOKENIZER_FILE, TaskSpec(), seq_len=16)
    texts = ["a fine film", "", "word " * 40, "ünïcödé ✓ and more", "short"]
    data = Dataset(texts, np.array([1, 0, 1, 0, 1]), ("negative", "positive"))
    corpus = enc.tokenize(data, chunk=2)  # chunk boundaries inside the data
    assert corpus.ids.dtype == np.int32 and len(corpus) == 5
    for idx in ([0, 1, 2, 3, 4], [4, 2, 2, 0]):
        want = enc.encode([texts[i] for i in idx], data.labels[idx])
        got = corpus.batch(idx)
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.attention_mask, want.attention_mask)
        np.testing.assert_array_equal(got.labels, want.labels)
    shard = corpus.subset([3, 0])
    np.testing.assert_array_equal(shard.batch([0, 1]).input_ids, corpus.batch([3, 0]).input_ids)
    assert shard.labels.tolist() == [0, 1]
