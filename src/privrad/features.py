"""The classifier's forward pass, made cheaper without changing what it computes.

A BERT or ALBERT sequence classifier reads one vector: the last layer's output at position 0
([CLS]), through the pooler and the classifier. Two exact consequences save most of a CPU step:

* **[CLS]-only top layer.** In the last layer, [CLS] attends to every token, so keys and values
  are needed for all tokens — but the query, the attention output, the feed-forward block and
  both LayerNorms only for [CLS]. :class:`Classifier` computes the last layer (for ALBERT: the
  last use of the shared layer) that way: about 1/6 of its cost at 40 tokens.
* **Frozen-layer features.** When LoRA adapts only the top ``lora_layers`` layers, the
  embeddings and every layer below are frozen: their output for a report is the same at every
  step and in every run of a study. :func:`frozen_features` computes it once per (token ids,
  frozen weights) and caches it on disk, like the tokenization cache; training and evaluation
  then start from those features. When only the top layer is adapted, its key and value
  projections of those features are fixed as well (LoRA adds a trainable delta on top of a
  frozen base): they are computed once per run, in one pass over the reports, instead of at
  every step. ALBERT adapts its one shared layer at every use, so nothing below its first use
  is fixed but the embeddings, and no features are made.

The frozen part (embeddings and the layers below the first adapted one) always runs as a fixed
feature extractor: without gradients and in evaluation mode (no dropout), with or without the
cache, so the two give the same logits (tested). Adapted layers and the head keep dropout while
training. Models of another family fall back to their own ``transformers`` forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from privrad.io import atomic_write_bytes

FAST_FAMILIES = ("bert", "albert")
#: Reports per cache shard: concurrent runs of a study share the work shard by shard.
SHARD_SIZE = 512


def base_model(model):
    """The ``transformers`` model inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Classifier(torch.nn.Module):
    """``model``'s logits from token ids or from frozen-layer features, with a [CLS]-only top layer.

    ``forward(input_ids, attention_mask, features=None) -> logits``. ``features``, when given,
    are the output of the frozen prefix (:meth:`frozen`), padded like ``input_ids``.
    ``frozen_layers`` counts the layers (uses, for ALBERT) in that prefix: the layers before the
    first one holding a trainable parameter, or 0 when the embeddings themselves are trained.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model  # registered: its trainable parameters are this module's
        hf = base_model(model)
        self.family = hf.config.model_type if hf.config.model_type in FAST_FAMILIES else None
        self._hf = [hf]  # a list: not registered twice
        if self.family == "bert":
            self._stack = list(hf.bert.encoder.layer)
            self._embedders = [hf.bert.embeddings]
        elif self.family == "albert":
            enc, c = hf.albert.encoder, hf.config
            groups = [enc.albert_layer_groups[int(i / (c.num_hidden_layers / c.num_hidden_groups))]
                      for i in range(c.num_hidden_layers)]
            self._stack = [layer for g in groups for layer in g.albert_layers]
            self._embedders = [hf.albert.embeddings, enc.embedding_hidden_mapping_in]
        else:
            self._stack, self._embedders = [], []
        trains = lambda m: any(p.requires_grad for p in m.parameters())  # noqa: E731
        self.frozen_layers = 0
        if self.family and not any(trains(m) for m in self._embedders):
            while self.frozen_layers < len(self._stack) and not trains(self._stack[self.frozen_layers]):
                self.frozen_layers += 1
            self.frozen_layers = min(self.frozen_layers, len(self._stack) - 1)  # the top layer is never cached
        # with only the top layer adapted, its frozen key/value projections are part of the features
        self.kv_features = bool(self.frozen_layers) and self.frozen_layers == len(self._stack) - 1 and all(
            _split_lora(m) is not None for m in self._projections(self._stack[-1])[1:])

    @property
    def num_layers(self) -> int:
        return len(self._stack)

    def forward(self, input_ids=None, attention_mask=None, features=None):
        if self.family is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        kv = None
        if features is None:
            h = self.frozen(input_ids, attention_mask)
        elif self.kv_features:  # [h, key base, value base] of the top layer
            h, *kv = features.split(features.shape[-1] // 3, dim=-1)
        else:
            h = features
        mask = _additive_mask(attention_mask, h.dtype)
        last = self.num_layers - 1
        for i in range(self.frozen_layers, last):
            h = self._stack[i](h, mask)
        h = self._cls_layer(self._stack[last], h, mask, kv)  # (B, 1, H): [CLS] only
        hf = self._hf[0]
        if self.family == "bert":
            pooled = hf.bert.pooler(h)
        else:
            pooled = hf.albert.pooler_activation(hf.albert.pooler(h[:, 0]))
        return hf.classifier(hf.dropout(pooled))

    def frozen(self, input_ids, attention_mask):
        """The frozen prefix's output: embeddings, then ``frozen_layers`` layers, as fixed features.

        When the embeddings are trained (full fine-tuning) this is just the embeddings, with
        gradients and dropout as the model's mode says.
        """
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device).expand(b, t)  # one row per report (Opacus, full FT)
        fixed = not any(p.requires_grad for m in self._embedders for p in m.parameters())
        with torch.no_grad() if fixed else contextlib.nullcontext(), _eval(self._embedders + self._stack[:self.frozen_layers], fixed):
            h = self._embedders[0](input_ids=input_ids, position_ids=pos)
            for m in self._embedders[1:]:
                h = m(h)
            if self.frozen_layers:
                mask = _additive_mask(attention_mask, h.dtype)
                for layer in self._stack[:self.frozen_layers]:
                    h = layer(h, mask)
        return h

    def _projections(self, layer):
        att = layer.attention.self if self.family == "bert" else layer.attention
        return att.query, att.key, att.value

    def _cls_layer(self, layer, h, mask, kv=None):
        """One layer's output at position 0 only (keys and values from every token).

        ``kv``: the key and value projections' frozen base outputs, given as features; the
        LoRA deltas (if key or value are adapted) are added here."""
        query, key, value = self._projections(layer)
        if kv is None:
            k, v = key(h), value(h)
        else:
            k, v = (base if (d := _split_lora(m)[1]) is None else base + d(h) for base, m in zip(kv, (key, value)))
        if self.family == "bert":
            sa, out = layer.attention.self, layer.attention.output
            ctx = _cls_attention(query(h[:, :1]), k, v, mask, sa.num_attention_heads, sa.scaling,
                                 sa.dropout.p if sa.training else 0.0)
            a = out(ctx, h[:, :1])
            return layer.output(layer.intermediate(a), a)
        att = layer.attention
        ctx = _cls_attention(query(h[:, :1]), k, v, mask, att.num_attention_heads, att.scaling,
                             att.attention_dropout.p if att.training else 0.0)
        a = att.LayerNorm(h[:, :1] + att.output_dropout(att.dense(ctx)))
        return layer.full_layer_layer_norm(layer.ffn_output(layer.activation(layer.ffn(a))) + a)

    @torch.no_grad()
    def with_key_value(self, features: "Features", *, rows: int = 8192) -> "Features":
        """``features`` (the frozen prefix's output) extended with the top layer's frozen key and
        value projections, ``[h, key base(h), value base(h)]`` per token, when :attr:`kv_features`."""
        if not self.kv_features:
            return features
        key, value = (_split_lora(m)[0] for m in self._projections(self._stack[-1])[1:])
        device = next(self.parameters()).device
        out = np.empty((features.flat.shape[0], 3 * features.flat.shape[1]), np.float32)
        for i in range(0, len(out), rows):
            h = torch.from_numpy(features.flat[i: i + rows]).to(device)
            out[i: i + rows] = torch.cat([h, key(h), value(h)], dim=-1).cpu().numpy()
        return Features(out, features.offsets)


def _split_lora(module):
    """``(frozen base Linear, trainable delta(x))`` of a projection: peft's plain LoRA Linear
    (``base(x) + B(A(dropout(x))) * scaling``) or a frozen ``nn.Linear`` (delta None); None otherwise."""
    if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
        return module, None
    base = getattr(module, "base_layer", None)
    if not (isinstance(base, torch.nn.Linear) and hasattr(module, "lora_A")) or base.weight.requires_grad \
            or getattr(module, "merged", False) or getattr(module, "disable_adapters", False) \
            or getattr(module, "lora_variant", None):
        return None

    def delta(x):
        out = 0.0
        for name in module.active_adapters:
            if name in module.lora_A:
                out = out + module.lora_B[name](module.lora_A[name](module.lora_dropout[name](x))) * module.scaling[name]
        return out

    return base, delta


def _additive_mask(attention_mask, dtype):
    """(B, T) 1/0 → (B, 1, 1, T) additive mask, as BERT's eager attention adds it."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _cls_attention(q, k, v, mask, heads: int, scaling: float, dropout: float):
    """Scaled dot-product attention of the [CLS] query ``q`` (B, 1, H) over keys/values (B, T, H)."""
    b, t, _ = k.shape
    # one query per report: broadcast products and sums beat thousands of 1-row matmuls on a CPU
    q = q.view(b, 1, heads, -1)
    scores = (q * k.view(b, t, heads, -1)).sum(-1) * scaling + mask.view(b, t, 1)  # (B, T, heads)
    p = torch.nn.functional.dropout(torch.softmax(scores, dim=1), p=dropout, training=dropout > 0)
    return (p.unsqueeze(-1) * v.view(b, t, heads, -1)).sum(1).reshape(b, 1, -1)


@contextlib.contextmanager
def _eval(modules, on: bool):
    """Evaluation mode (no dropout) for ``modules`` inside the block, when ``on``."""
    if not on:
        yield
        return
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class Features:
    """Frozen-layer features of every report: one ``(tokens, hidden)`` float32 array per report."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes)


def frozen_key(classifier: Classifier, encoded) -> str:
    """Cache key: sha256 of the frozen weights, the token ids and the prefix depth."""
    h = hashlib.sha256(f"{classifier.family}|{classifier.frozen_layers}".encode())
    for m in classifier._embedders + classifier._stack[:classifier.frozen_layers]:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for ids in encoded.input_ids:
        h.update(np.asarray(ids, np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:24]


@torch.no_grad()
def frozen_features(classifier: Classifier, encoded, *, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 64) -> Features:
    """The frozen prefix's output for every report of ``encoded`` (token ids), in dataset order,
    extended with the top layer's frozen key and value projections when only that layer is
    adapted (:meth:`Classifier.with_key_value`; computed here, not cached).

    With ``cache_dir`` the features are kept on disk under a key of the frozen weights and the
    token ids, in shards of :data:`SHARD_SIZE` reports written atomically. Runs that need the same
    features at the same time share the work: each computes the shards nobody is computing (a
    file lock per shard) and waits for the others'.
    """
    from privrad.data.tokenize import collate

    if classifier.family is None or any(p.requires_grad for m in classifier._embedders for p in m.parameters()):
        raise ValueError("frozen_features needs a model whose embeddings are frozen (LoRA on BERT or ALBERT); "
                         "with full fine-tuning nothing below the top is fixed.")
    device = next(classifier.parameters()).device
    n = len(encoded)
    shards = [range(i, min(n, i + SHARD_SIZE)) for i in range(0, n, SHARD_SIZE)]

    def compute(rows: range) -> tuple[np.ndarray, np.ndarray]:
        order = sorted(rows, key=lambda i: len(encoded.input_ids[i]))
        out: dict[int, np.ndarray] = {}
        for k in range(0, len(order), batch_size):
            idx = order[k: k + batch_size]
            batch = collate([(encoded.input_ids[i], np.zeros(0), np.zeros(0, bool), 1.0) for i in idx], encoded.pad_token_id)
            h = classifier.frozen(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = h[j, : len(encoded.input_ids[i])]
        arrays = [out[i] for i in rows]
        return np.concatenate(arrays), np.cumsum([0] + [len(a) for a in arrays])

    if cache_dir is None:
        parts = [compute(r) for r in shards]
    else:
        folder = Path(cache_dir) / f"features-{frozen_key(classifier, encoded)}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"shard-{k:05d}.npz" for k in range(len(shards))]
        for blocking in (False, True):  # first take free shards, then wait for (or redo) the others'
            for rows, path in zip(shards, paths):
                if not path.exists():
                    with _shard_lock(path, blocking=blocking) as mine:
                        if mine and not path.exists():
                            _save_shard(path, *compute(rows))
        parts = [_load_shard(p) for p in paths]
    if not parts:
        return Features(np.zeros((0, 0), np.float32), np.zeros(1, np.int64))
    offsets = [0]
    for flat, off in parts:
        offsets.extend((offsets[-1] + off[1:]).tolist())
    return classifier.with_key_value(Features(np.concatenate([p[0] for p in parts]), np.asarray(offsets, np.int64)))


@contextlib.contextmanager
def _shard_lock(path: Path, *, blocking: bool):
    import fcntl

    with open(path.with_suffix(".lock"), "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_shard(path: Path, flat: np.ndarray, offsets: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, flat=flat.astype(np.float32, copy=False), offsets=offsets.astype(np.int64))
    atomic_write_bytes(path, buf.getvalue())


def _load_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["flat"], z["offsets"]


__all__ = ["Classifier", "Features", "frozen_features", "frozen_key", "base_model", "SHARD_SIZE"]
