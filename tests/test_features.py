"""The fast forward pass is exact: [CLS]-only top layer, frozen-layer features, their cache."""

import threading
import time

import numpy as np
import pytest
import torch

from privrad import features as features_module
from privrad.config import RunConfig
from privrad.data.tokenize import Encoded, EncodedDataset, collate, tokenize_dataset
from privrad.errors import ConfigError
from privrad.features import Classifier, frozen_features
from privrad.models import build_model, load_tokenizer
from privrad.train import train

from _synthetic import make_dataset, no_dropout

#: (model, build_model options): every path of Classifier — LoRA in every layer, LoRA in the top
#: layer (frozen prefix → features), ALBERT's shared layer, full fine-tuning, a frozen pooler.
CASES = [
    ("tiny-bert", {}),
    ("tiny-bert", {"lora_layers": 1}),
    ("tiny-bert", {"lora_layers": 1, "train_pooler": False}),
    ("tiny-bert", {"lora_layers": 1, "lora_targets": ("query", "key", "value")}),
    ("tiny-albert", {}),
    ("tiny-bert", {"method": "full"}),
]
IDS = ["bert-lora", "bert-lora-top1", "bert-lora-top1-frozen-pooler", "bert-lora-top1-qkv", "albert-lora", "bert-full"]


def _model(name, **options):
    model = build_model(name, 3, seed=0, **options)
    for n, p in model.named_parameters():  # LoRA B starts at 0: make every factor non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _reports(seed=0):
    """Five reports of different lengths ([CLS] first, [SEP] last) as unpadded token ids."""
    g = np.random.default_rng(seed)
    return [np.concatenate([[101], g.integers(1000, 2000, n - 2), [102]]).astype(np.int32) for n in (12, 8, 12, 5, 3)]


def _padded(reports, feats=None):
    rows = [(r, np.zeros(3, np.float32), np.ones(3, bool), 1.0) + ((feats[i],) if feats is not None else ())
            for i, r in enumerate(reports)]
    return collate(rows)


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_classifier_logits_equal_the_models_own_forward(name, options):
    model = _model(name, **options).eval()
    net = Classifier(model)
    b = _padded(_reports())
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    out = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    assert out.shape == ref.shape == (5, 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert net.frozen_layers == (1 if options.get("lora_layers") else 0)
    assert net.kv_features == bool(options.get("lora_layers"))  # the top layer's key/value bases are features too


@pytest.mark.parametrize("name,options", CASES[:5], ids=IDS[:5])
def test_frozen_features_give_the_same_logits_as_token_ids(name, options, tmp_path, monkeypatch):
    """Cache vs no cache, in eval mode and in train mode (dropout draws alike: the frozen part never drops)."""
    monkeypatch.setattr(features_module, "SHARD_SIZE", 2)  # several shards, written and read back
    model = _model(name, **options)
    net = Classifier(model)
    reports = _reports()
    enc = Encoded(reports, np.array([len(r) for r in reports]), 16, 0)
    feats = frozen_features(net, enc, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*/shard-*.npz"))) == 3
    again = frozen_features(net, enc, cache_dir=tmp_path)  # read from disk
    uncached = frozen_features(net, enc)
    for i in range(len(reports)):
        assert feats[i].shape[0] == len(reports[i])
        np.testing.assert_array_equal(feats[i], again[i])
        np.testing.assert_array_equal(feats[i], uncached[i])
    b = _padded(reports, feats)
    for mode in ("eval", "train"):
        getattr(net, mode)()
        torch.manual_seed(1)
        from_ids = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        torch.manual_seed(1)
        from_features = net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], features=b["features"])
        torch.testing.assert_close(from_features, from_ids, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,options", CASES[:5], ids=IDS[:5])
def test_per_sample_gradients_through_the_fast_path_equal_one_at_a_time(name, options):
    """Opacus hooks on the fast path (features in, [CLS]-only top layer) give each report's exact
    gradient — the gradient of the model's own transformers forward on that report alone."""
    from opacus import GradSampleModule

    model = no_dropout(_model(name, **options))
    net = Classifier(model)
    reports = _reports(1)
    enc = Encoded(reports, np.array([len(r) for r in reports]), 16, 0)
    feats = frozen_features(net, enc) if net.frozen_layers else None
    b = _padded(reports, feats)
    y = torch.tensor(np.random.default_rng(2).integers(0, 2, (5, 3)), dtype=torch.float32)
    gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum")
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "features") if k in b}
    torch.nn.functional.binary_cross_entropy_with_logits(gsm(**inputs), y, reduction="sum").backward()
    per_sample = {n.removeprefix("_module.model."): p.grad_sample.clone()
                  for n, p in gsm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in per_sample)
    gsm.remove_hooks()
    for i, r in enumerate(reports):
        model.zero_grad()
        ids = torch.as_tensor(r, dtype=torch.long)[None]
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y[i: i + 1], reduction="sum").backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                ps = per_sample[n][i]
                rel = (ps - p.grad).norm() / p.grad.norm().clamp(min=1e-12)
                assert rel < 1e-4, (n, float(rel))


def _encoded(model="tiny-bert", n=60):
    ds = make_dataset(n, 0).split("train")
    enc = tokenize_dataset(ds, load_tokenizer(model), max_length=48)
    return EncodedDataset(enc, ds.labels, ds.label_mask)


@pytest.mark.parametrize("private", [True, False], ids=["dp", "non-private"])
def test_training_on_cached_features_equals_training_from_token_ids(private):
    """The same run with and without frozen-layer features: the same losses and the same weights."""
    cfg = RunConfig(model="tiny-bert", epsilon=1.0 if private else None, batch_size=8, physical_batch_size=3,
                    num_epochs=1, lr=1e-2, lora_layers=1, dp_randomness="reproducible")  # same batches and noise twice
    results = []
    for cached in (False, True):
        model = build_model("tiny-bert", 14, seed=0, lora_layers=1)
        net = Classifier(model)
        data = _encoded()
        if cached:
            data.features = frozen_features(net, data.encoded)
        res = train(net, data, cfg, delta=1e-4 if private else None, progress=False)
        results.append((res, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    (a, wa), (b, wb) = results
    assert [r["batch_size"] for r in a.curve] == [r["batch_size"] for r in b.curve]
    np.testing.assert_allclose([r["loss"] for r in a.curve], [r["loss"] for r in b.curve], rtol=1e-5)
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-6)


def test_concurrent_runs_share_the_shards(tmp_path, monkeypatch):
    """A shard another run is computing (its lock held) is left to it; the rest is computed here."""
    import fcntl

    monkeypatch.setattr(features_module, "SHARD_SIZE", 2)
    net = Classifier(_model("tiny-bert", lora_layers=1))
    reports = _reports()
    enc = Encoded(reports, np.array([len(r) for r in reports]), 16, 0)
    folder = tmp_path / f"features-{features_module.frozen_key(net, enc)}"
    folder.mkdir()
    lock = open(folder / "shard-00000.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another run" holds shard 0
    out = {}
    worker = threading.Thread(target=lambda: out.update(f=frozen_features(net, enc, cache_dir=tmp_path)))
    worker.start()
    for _ in range(600):  # the others' shards appear while shard 0 waits for its lock
        if (folder / "shard-00001.npz").exists() and (folder / "shard-00002.npz").exists():
            break
        time.sleep(0.05)
    assert (folder / "shard-00001.npz").exists() and (folder / "shard-00002.npz").exists()
    assert worker.is_alive() and not (folder / "shard-00000.npz").exists()
    fcntl.flock(lock, fcntl.LOCK_UN)  # "the other run" died without writing: this one computes it
    lock.close()
    worker.join(timeout=120)
    assert not worker.is_alive()
    ref = frozen_features(net, enc)
    for i in range(len(reports)):
        np.testing.assert_array_equal(out["f"][i], ref[i])


def test_full_fine_tuning_has_no_frozen_features():
    net = Classifier(_model("tiny-bert", method="full"))
    assert net.frozen_layers == 0
    with pytest.raises(ValueError, match="frozen"):
        frozen_features(net, Encoded(_reports(), np.array([12, 8, 12, 5, 3]), 16, 0))


def test_lora_layers_adapts_only_the_top_layers_and_train_pooler_freezes_the_pooler():
    model = build_model("tiny-bert", 3, seed=0, lora_layers=1, train_pooler=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layer.1." in n or "classifier" in n for n in trainable), trainable
    assert not any("pooler" in n for n in trainable)
    assert any("pooler" in n for n, p in build_model("tiny-bert", 3, seed=0).named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="ALBERT"):
        build_model("tiny-albert", 3, lora_layers=1)
    with pytest.raises(ConfigError, match="out of range"):
        build_model("tiny-bert", 3, lora_layers=3)


def test_a_model_sharing_lower_layers_continues_from_their_cached_features(tmp_path, monkeypatch):
    """minilm-l3 is minilm-l6's first three layers: the deeper model's features start from the
    shallower one's cache (same key at the shared depth) and equal features computed from scratch."""
    from transformers import BertForSequenceClassification

    from privrad.features import base_model, frozen_keys

    plain = base_model(build_model("tiny-bert", 3, method="full", seed=0))
    config = plain.config.__class__.from_dict({**plain.config.to_dict(), "num_hidden_layers": 3})
    deep = BertForSequenceClassification(config)
    missing, _ = deep.load_state_dict(plain.state_dict(), strict=False)  # layers 0-1 shared, layer 2 new
    assert all(".layer.2." in k for k in missing)
    deep.save_pretrained(tmp_path / "deep")
    shallow = Classifier(build_model("tiny-bert", 3, seed=0, lora_layers=1))  # frozen: embeddings + layer 0
    deeper = Classifier(build_model(str(tmp_path / "deep"), 3, seed=0, lora_layers=1))  # frozen: layers 0-1
    reports = _reports()
    enc = Encoded(reports, np.array([len(r) for r in reports]), 16, 0)
    assert frozen_keys(shallow, enc)[1] == frozen_keys(deeper, enc)[1] != frozen_keys(deeper, enc)[2]
    frozen_features(shallow, enc, cache_dir=tmp_path / "cache")
    starts = []
    original = Classifier.frozen
    monkeypatch.setattr(Classifier, "frozen", lambda self, *a, **kw: starts.append(kw.get("start")) or original(self, *a, **kw))
    continued = frozen_features(deeper, enc, cache_dir=tmp_path / "cache")
    assert starts and set(starts) == {1}
    monkeypatch.setattr(Classifier, "frozen", original)
    scratch = frozen_features(deeper, enc)
    for i in range(len(reports)):
        np.testing.assert_allclose(continued[i], scratch[i], rtol=1e-5, atol=1e-6)


def test_features_with_or_without_the_top_layers_key_value_give_the_same_logits():
    net = Classifier(_model("tiny-bert", lora_layers=1)).eval()
    reports = _reports()
    enc = Encoded(reports, np.array([len(r) for r in reports]), 16, 0)
    with_kv, plain = frozen_features(net, enc), frozen_features(net, enc, key_value=False)
    assert with_kv[0].shape[1] == 3 * plain[0].shape[1] == 3 * net.hidden_size
    a, b = _padded(reports, with_kv), _padded(reports, plain)
    torch.testing.assert_close(net(input_ids=a["input_ids"], attention_mask=a["attention_mask"], features=a["features"]),
                               net(input_ids=b["input_ids"], attention_mask=b["attention_mask"], features=b["features"]),
                               rtol=1e-5, atol=1e-6)
