import numpy as np
import pytest
import torch

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, tokenize_dataset
from privrad.models import build_model, load_tokenizer
from privrad.train import example_losses, planned_steps, train

from _synthetic import make_dataset


def _encoded(n=60, seed=0, model="tiny-bert"):
    ds = make_dataset(n, seed).split("train")
    enc = tokenize_dataset(ds, load_tokenizer(model), max_length=48)
    return EncodedDataset(enc, ds.labels, ds.label_mask)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-albert"])
def test_dp_training_changes_only_trainable_weights(name):
    data = _encoded(model=name)
    cfg = RunConfig(model=name, epsilon=1.0, batch_size=8, physical_batch_size=3, num_epochs=1, lr=1e-2)
    model = build_model(name, 14, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train(model, data, cfg, delta=1e-4, progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    for n, p in model.named_parameters():
        if n in trainable:
            if "lora_" in n or "classifier" in n:
                assert not torch.equal(p.detach(), before[n]), n
        else:
            assert torch.equal(p.detach(), before[n]), f"frozen weight {n} changed"
    assert res.steps == res.planned_steps == planned_steps(len(data), 8, 1)
    assert res.noise_multiplier > 0 and len(res.curve) == res.steps
    assert "epsilon" in res.curve[-1] and res.curve[-1]["epsilon"] <= 1.0


def test_empty_poisson_batches_are_trained_and_counted():
    data = _encoded(n=30)  # 21 training reports, expected batch 1: P(empty) = (1 - 1/21)^21 ≈ 0.36 per step
    cfg = RunConfig(model="tiny-bert", epsilon=5.0, batch_size=1, physical_batch_size=4, num_epochs=2, lr=1e-2)
    model = build_model("tiny-bert", 14, seed=0)
    res = train(model, data, cfg, delta=1e-3, progress=False)
    empties = [r for r in res.curve if r["batch_size"] == 0]
    assert len(empties) >= 3
    assert res.steps == res.planned_steps == len(res.curve) == 42  # empty steps included
    assert res.info["empty_batches"] == len(empties)


def test_masked_labels_and_dummy_rows_carry_no_loss():
    logits = torch.randn(2, 3)
    batch = {"labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]]), "label_mask": torch.tensor([[True, False, True], [True, True, True]]),
             "weight": torch.tensor([1.0, 0.0])}
    losses = example_losses(logits, batch)
    assert losses[1] == 0
    batch2 = {**batch, "labels": torch.tensor([[1.0, 1, 1], [1, 1, 1]])}  # flip the masked entry
    assert torch.equal(example_losses(logits, batch2)[0], losses[0])


def test_non_private_training_is_deterministic_and_learns_on_train():
    data = _encoded(n=80)
    cfg = RunConfig(model="tiny-bert", epsilon=None, batch_size=8, physical_batch_size=5, num_epochs=3, lr=1e-2)
    runs = [train(build_model("tiny-bert", 14, seed=0), data, cfg, progress=False) for _ in range(2)]
    assert [r["loss"] for r in runs[0].curve] == [r["loss"] for r in runs[1].curve]
    losses = [r["loss"] for r in runs[0].curve]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert runs[0].history == [] and runs[0].noise_multiplier is None
