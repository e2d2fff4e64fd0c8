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
    assert "epsilon_spent" in res.curve[-1] and res.curve[-1]["epsilon_spent"] <= 1.0


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


def learning_dataset(tmp_path):
    """Simulated MIMIC-CXR reports, written in the real layout and read back by the real loader."""
    from privrad.data import load_dataset
    from privrad.data.simulate import simulate

    simulate("mimic-cxr", tmp_path / "mimic-cxr", n=400, seed=0)
    return load_dataset("simulated-mimic-cxr", tmp_path / "mimic-cxr")


@pytest.mark.slow
def test_minilm_learns_and_tiny_epsilon_costs_utility(tmp_path):
    """Non-private LoRA on minilm-l6 learns well above all-negative; ε = 0.01 stays clearly below.

    Measured on tests/_synthetic.py (n=400, 2 epochs): non-private weighted F1 0.69 (AUROC 0.86),
    ε = 0.01 weighted F1 0.27 (AUROC 0.59); the bands leave room for seed and platform noise.
    """
    from privrad.pipeline import run

    ds = learning_dataset(tmp_path)
    cfg = dict(dataset=ds.name, model="minilm-l6", batch_size=16, physical_batch_size=16, num_epochs=2, lr=5e-3,
               max_length=64, n_bootstrap=0)
    public = run({**cfg, "epsilon": None}, results_dir=tmp_path, dataset=ds, progress=False).metrics
    private = run({**cfg, "epsilon": 0.01}, results_dir=tmp_path, dataset=ds, progress=False).metrics
    assert public["all_negative_weighted_f1"] == 0.0
    assert public["weighted_f1"] >= 0.5 and public["macro_auroc"] >= 0.75
    assert private["weighted_f1"] <= public["weighted_f1"] - 0.2
    assert private["macro_auroc"] <= 0.7


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-albert"])
def test_dp_full_fine_tuning_updates_every_weight_it_uses(name):
    data = _encoded(n=40, model=name)
    cfg = RunConfig(model=name, method="full", epsilon=1.0, batch_size=8, physical_batch_size=4, num_epochs=0.5, lr=1e-3)
    model = build_model(name, 14, method="full", seed=0)
    emb = model.base_model.embeddings.position_embeddings.weight.detach().clone()
    res = train(model, data, cfg, delta=1e-4, progress=False)
    assert res.steps == res.planned_steps
    assert not torch.equal(model.base_model.embeddings.position_embeddings.weight, emb)  # noise reaches every weight


def test_a_runs_progress_has_one_owner(tmp_path, capsys):
    """privrad.progress.Reporter gives both the training bar (where the run runs) and the sweep's
    progress file; train() reports through it only (one tqdm owner: privrad.progress)."""
    from privrad.progress import Reporter, read

    report = Reporter(tmp_path / "p.json", interval_s=0.0, bar=True, desc="train ε=1")
    for s in range(4):
        report.step(s, 3, epoch=1, num_epochs=1, **({"loss": "0.500"} if s == 3 else {}))
    report.close()
    record = read(tmp_path / "p.json")
    assert (record["phase"], record["step"], record["total"]) == ("training", 3, 3)
    assert "train ε=1" in capsys.readouterr().err


def test_the_sweeps_line_for_a_running_run_shows_the_eta_from_the_steps_done(tmp_path):
    """What a sweep shows under its runs-done bar for a run at step 2 of 600 after ~0.3 s of
    training: the run's label, its epoch and step, and an ETA at the pace of the steps done
    (~0.15 s a step × 598 steps ≈ 1:30), read by privrad.progress.Display from the file the run's
    Reporter wrote."""
    import io
    import re
    import time

    from privrad.progress import Display, Reporter

    out = io.StringIO()
    shown = Display(total=1, desc="study t", file=out, interval_s=3600)  # refreshed by hand below
    report = Reporter(tmp_path / "p.json", interval_s=0.0)
    shown.started("r1", "mimic-cxr · tiny-bert · ε=1", tmp_path / "p.json")
    report.step(0, 600, epoch=1, num_epochs=2)
    time.sleep(0.3)
    report.step(2, 600, epoch=1, num_epochs=2)
    shown.refresh()
    shown.close()
    text = out.getvalue().replace("\r", "\n")
    eta = re.search(r"mimic-cxr · tiny-bert · ε=1 \| +\| epoch 1/2 · step 2/600 · ETA (\d+):(\d\d)", text)
    assert eta, text
    assert 85 <= int(eta[1]) * 60 + int(eta[2]) <= 600, text  # 598 steps at the pace of the first two
