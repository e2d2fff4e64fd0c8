import numpy as np

from privrad.data.tokenize import EncodedDataset, collate, tokenize_dataset
from privrad.models import load_tokenizer

from _synthetic import make_dataset


def test_truncation_lengths_and_cache(tmp_path):
    ds = make_dataset(40)
    tok = load_tokenizer("tiny-bert")
    enc = tokenize_dataset(ds, tok, max_length=16, cache_dir=tmp_path)
    assert len(enc) == 40
    assert all(len(x) <= 16 for x in enc.input_ids)
    assert all(x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in enc.input_ids)
    assert enc.n_truncated == int((enc.lengths > 16).sum()) > 0
    full = tok(ds.texts[0])["input_ids"]
    assert enc.lengths[0] == len(full)
    files = list(tmp_path.glob("tokens-*.npz"))
    assert len(files) == 1
    again = tokenize_dataset(ds, tok, max_length=16, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(enc.input_ids, again.input_ids))
    assert np.array_equal(enc.lengths, again.lengths)
    tokenize_dataset(ds, tok, max_length=32, cache_dir=tmp_path)  # another key
    tokenize_dataset(ds.subset(range(10)), tok, max_length=16, cache_dir=tmp_path)  # another dataset
    assert len(list(tmp_path.glob("tokens-*.npz"))) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_collate_pads_per_batch_and_handles_empty():
    rows = [(np.array([101, 5, 102]), np.ones(2, np.float32), np.ones(2, bool), 1.0),
            (np.array([101, 102]), np.zeros(2, np.float32), np.array([True, False]), 1.0)]
    b = collate(rows, pad_token_id=0)
    assert b["input_ids"].shape == (2, 3)
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["label_mask"].tolist() == [[True, True], [True, False]]
    empty = collate([], 0)
    assert empty["input_ids"].shape[0] == 0


def test_length_sorted_batches_cover_every_row_once():
    ds = make_dataset(30)
    enc = tokenize_dataset(ds, load_tokenizer("tiny-bert"), max_length=64)
    data = EncodedDataset(enc, ds.labels, ds.label_mask)
    batches = data.length_sorted_batches(7)
    assert sorted(i for b in batches for i in b) == list(range(30))
