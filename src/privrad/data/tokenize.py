"""Tokenization once per (dataset, tokenizer, max_length), cached on disk; dynamic padding.

Reports are tokenized once, truncated to ``max_length`` and kept unpadded; each micro-batch is
padded only to its own longest report (:func:`collate`). The cache key is the dataset's content
fingerprint, the tokenizer's identity (class, vocabulary hash, special tokens) and
``max_length``, so a changed report, vocabulary or length never reuses stale tokens. Cache files
are written atomically (:mod:`privrad.io`).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from privrad.io import atomic_write_bytes, cache_lock


@dataclass(frozen=True)
class Encoded:
    """Token ids of every report of a dataset, in dataset order.

    Attributes:
        input_ids: one ``int32`` array per report, with special tokens, truncated to max_length.
        lengths: untruncated token counts (with special tokens), to report truncation.
        max_length: the truncation length.
        pad_token_id: the tokenizer's padding id (used by :func:`collate`).
    """

    input_ids: list[np.ndarray]
    lengths: np.ndarray
    max_length: int
    pad_token_id: int = 0

    @property
    def n_truncated(self) -> int:
        return int((self.lengths > self.max_length).sum())

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, index) -> "Encoded":
        idx = np.asarray(index, dtype=int)
        return Encoded([self.input_ids[i] for i in idx], self.lengths[idx], self.max_length, self.pad_token_id)


def tokenizer_identity(tokenizer) -> str:
    """A short hash naming a tokenizer by what decides its output (class, vocabulary, specials)."""
    cached = getattr(tokenizer, "_privrad_identity", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items())).encode())
    h.update(json.dumps(tokenizer.all_special_tokens).encode())
    h.update(str(getattr(tokenizer, "do_lower_case", "")).encode())
    ident = h.hexdigest()[:16]
    try:  # tokenizers are immutable in use: remember the hash on the object
        tokenizer._privrad_identity = ident
    except AttributeError:  # pragma: no cover
        pass
    return ident


def tokenize_dataset(dataset, tokenizer, *, max_length: int, cache_dir: str | Path | None = None) -> Encoded:
    """Tokenize every report of ``dataset`` (a ReportDataset or a sequence of texts)."""
    texts: Sequence[str] = dataset.texts if hasattr(dataset, "texts") else list(dataset)
    path = None
    if cache_dir is not None:
        fp = dataset.fingerprint if hasattr(dataset, "fingerprint") else hashlib.sha256(
            json.dumps(list(texts)).encode()).hexdigest()
        key = hashlib.sha256(f"{fp}|{tokenizer_identity(tokenizer)}|{max_length}".encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"tokens-{key}.npz"
        with cache_lock(path):  # runs started together: one tokenizes, the others read its file
            if path.exists():
                with np.load(path) as z:
                    flat, offsets, lengths = z["flat"], z["offsets"], z["lengths"]
                ids = [flat[offsets[i]: offsets[i + 1]] for i in range(len(lengths))]
                return Encoded(ids, lengths, max_length, int(tokenizer.pad_token_id or 0))
            return _tokenize(texts, tokenizer, max_length, path)
    return _tokenize(texts, tokenizer, max_length, None)


def _tokenize(texts: Sequence[str], tokenizer, max_length: int, path: Path | None) -> Encoded:
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    lengths = np.array([len(x) for x in full], dtype=np.int64)
    ids = []
    for x in full:
        if len(x) > max_length:  # keep [CLS] … [SEP]: truncate the body, keep the final special token
            x = x[: max_length - 1] + x[-1:]
        ids.append(np.asarray(x, dtype=np.int32))
    enc = Encoded(ids, lengths, max_length, int(tokenizer.pad_token_id or 0))
    if path is not None:
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
        flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        buf = io.BytesIO()
        np.savez(buf, flat=flat, offsets=offsets, lengths=lengths)
        atomic_write_bytes(path, buf.getvalue())
    return enc


def collate(rows, pad_token_id: int = 0):
    """Pad a list of ``(input_ids, labels, label_mask, weight[, features])`` rows to the longest in the batch.

    Returns a dict of tensors: ``input_ids``, ``attention_mask``, ``labels``, ``label_mask``,
    ``weight``, and ``features`` (``(batch, width, hidden)``, zero-padded) when the rows carry
    frozen-layer features (:mod:`privrad.features`). An empty list gives an empty batch (Poisson
    sampling can draw one).
    """
    import torch

    if len(rows) == 0:
        return {"input_ids": torch.zeros(0, 1, dtype=torch.long), "attention_mask": torch.zeros(0, 1, dtype=torch.long),
                "labels": torch.zeros(0, 0), "label_mask": torch.zeros(0, 0, dtype=torch.bool), "weight": torch.zeros(0)}
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r[0])] = torch.as_tensor(r[0], dtype=torch.long)
        att[i, : len(r[0])] = 1
    out = {
        "input_ids": ids,
        "attention_mask": att,
        "labels": torch.as_tensor(np.stack([r[1] for r in rows]), dtype=torch.float32),
        "label_mask": torch.as_tensor(np.stack([r[2] for r in rows]), dtype=torch.bool),
        "weight": torch.as_tensor([r[3] for r in rows], dtype=torch.float32),
    }
    if len(rows[0]) > 4:
        feats = np.zeros((len(rows), width, rows[0][4].shape[1]), dtype=np.float32)
        for i, r in enumerate(rows):
            feats[i, : len(r[4])] = r[4]
        out["features"] = torch.from_numpy(feats)
    return out


class EncodedDataset:
    """A torch-style map dataset over encoded reports: row ``i`` = (ids, labels, mask, weight=1),
    plus the report's frozen-layer features when ``features`` is set (:mod:`privrad.features`)."""

    def __init__(self, encoded: Encoded, labels: np.ndarray, label_mask: np.ndarray, features=None):
        self.encoded, self.labels, self.label_mask, self.features = encoded, labels, label_mask, features

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int):
        row = (self.encoded.input_ids[i], self.labels[i], self.label_mask[i], 1.0)
        return row if self.features is None else (*row, self.features[i])

    def length_sorted_batches(self, batch_size: int) -> list[list[int]]:
        """Index batches of similar length (for evaluation: less padding, same results)."""
        order = np.argsort([len(x) for x in self.encoded.input_ids], kind="stable")
        return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
