"""Issue 8: what a private run releases is what its (ε, δ) covers.

Secret DP randomness (secure vs reproducible), patient-level DP (sampling, per-patient clipping,
accounting) and the run writer's withholding of training statistics — all with real Opacus,
real models and the real writer.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, tokenize_dataset
from privrad.models import build_model, load_tokenizer
from privrad.privacy import TRAINING_STATISTICS, epsilon_from_history, make_private
from privrad.pipeline import run
from privrad.runs import CURVE_PUBLIC_KEYS, read_run
from privrad.train import _chunks, planned_steps, train

from _synthetic import make_dataset, no_dropout


def _encoded(ds):
    enc = tokenize_dataset(ds, load_tokenizer("tiny-bert"), max_length=32)
    return EncodedDataset(enc, ds.labels, ds.label_mask)


@pytest.fixture(scope="module")
def data():
    return _encoded(make_dataset(60, seed=1).split("train"))  # 42 training reports


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _train_twice(data, **changes):
    """Two trainings of one configuration and seed: (initial weights, final weights, result) each."""
    cfg = RunConfig(model="tiny-bert", epsilon=8.0, batch_size=8, physical_batch_size=8, num_epochs=1, lr=5e-2,
                    seed=3).replace(**changes)
    out = []
    for _ in range(2):
        model = build_model("tiny-bert", 14, seed=cfg.seed)
        init = _state(model)
        res = train(model, data, cfg, delta=1e-3, progress=False)
        out.append((init, _state(res.model), res))
    return out


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_secure_mode_draws_new_batches_and_noise_at_the_same_seed_with_the_same_initialisation(data):
    (init1, end1, r1), (init2, end2, r2) = _train_twice(data, dp_randomness="secure")
    assert _same(init1, init2)  # the run seed still controls initialisation
    assert r1.info["batches_digest"] != r2.info["batches_digest"]  # different Poisson masks
    assert not _same(end1, end2)
    # noise alone: with sample rate 1 every report is in every batch (identical masks), so the
    # weights can differ only through the Gaussian noise
    (init1, end1, r1), (init2, end2, r2) = _train_twice(data, dp_randomness="secure", batch_size=len(data))
    assert _same(init1, init2) and r1.info["batches_digest"] == r2.info["batches_digest"]
    assert not _same(end1, end2)


def test_reproducible_mode_replays_batches_and_noise_from_the_seed(data):
    (init1, end1, r1), (init2, end2, r2) = _train_twice(data, dp_randomness="reproducible")
    assert _same(init1, init2) and r1.info["batches_digest"] == r2.info["batches_digest"] and _same(end1, end2)
    (_, _, r3), _ = _train_twice(data, dp_randomness="reproducible", seed=4)
    assert r3.info["batches_digest"] != r1.info["batches_digest"]  # another seed, other batches


# --------------------------------------------------------------------------- patient-level DP


def _patients(n, per=3):
    return np.arange(n) // per  # consecutive reports share a patient


def test_patient_level_sampling_keeps_patients_whole_and_the_accountant_counts_every_step(data):
    units = _patients(len(data))
    cfg = RunConfig(model="tiny-bert", epsilon=4.0, batch_size=9, physical_batch_size=4, num_epochs=2, lr=5e-2,
                    privacy_unit="patient", dp_randomness="reproducible")
    model = build_model("tiny-bert", 14, seed=0)
    res = train(model, data, cfg, delta=1e-3, progress=False, units=units)
    q = cfg.batch_size / len(data)
    assert res.steps == res.planned_steps == planned_steps(len(data), 9, 2) == len(res.curve)
    assert res.history == [(res.noise_multiplier, pytest.approx(q), res.steps)]  # same q and steps as report-level
    assert 0.97 * 4.0 <= epsilon_from_history(res.history, 1e-3) <= 4.0
    # batches are unions of whole patients: sizes are multiples of 3 (every patient has 3 reports)
    assert all(r["batch_size"] % 3 == 0 for r in res.curve) and any(r["batch_size"] > 0 for r in res.curve)
    # a physical chunk never splits a patient, even when a patient is larger than the chunk size
    chunks = _chunks(list(range(0, 12)), data, 4, units=units)
    assert sorted(i for c in chunks for i in c) == list(range(12))
    for c in chunks:
        for u in {int(units[i]) for i in c}:
            assert set(np.flatnonzero(units[:12] == u)) <= set(c)
    assert _chunks([0, 1, 2], data, 2, units=units) == [sorted([0, 1, 2], key=lambda i: len(data.encoded.input_ids[i]))]


def test_each_patient_contributes_one_gradient_of_its_mean_loss_clipped_once(data):
    """Zero noise, a tiny clipping norm: the summed gradient DP-SGD uses must equal the sum over
    patients of each patient's clipped mean-loss gradient, computed one patient at a time."""
    from privrad.features import Classifier
    from privrad.train import _batch, _inputs, example_losses

    units = np.array([0, 0, 0, 1, 2, 2] + list(range(3, 3 + len(data) - 6)))
    chunk = [0, 1, 2, 3, 4, 5]  # patient 0 has three reports, 1 one, 2 two
    C = 1e-3

    def fresh():
        m = no_dropout(build_model("tiny-bert", 14, seed=0))
        for n, p in m.named_parameters():  # LoRA B starts at 0: make every factor non-trivial
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(1))
        return m

    model = fresh()
    net = Classifier(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = make_private(module=net, optimizer=opt, num_samples=len(data), batch_size=6, steps=1, max_grad_norm=C,
                           noise_multiplier=0.0, sampling_unit="patient", units=units)
    batch = _batch(data, chunk)
    losses = example_losses(trainer.module(**_inputs(batch)), batch)
    trainer.optimizer.signal_skip_step(do_skip=True)  # keep the summed clipped gradient for inspection
    trainer.backward(losses, last=False, indices=chunk)
    summed = {id(p): p.summed_grad.clone() for p in trainer.optimizer.params}
    trainer.close()

    expected = None
    for members in ([0, 1, 2], [3], [4, 5]):
        ref = fresh()
        b = _batch(data, members)
        example_losses(Classifier(ref)(**_inputs(b)), b).mean().backward()
        grads = [p.grad.clone() for p in ref.parameters() if p.requires_grad]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        assert norm > 10 * C  # every patient is clipped
        clipped = [g * (C / (norm + 1e-6)) for g in grads]
        expected = clipped if expected is None else [e + c for e, c in zip(expected, clipped)]
    got = [summed[id(p)] for p in trainer.optimizer.params]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-3, atol=1e-9)
    total = torch.sqrt(sum((g ** 2).sum() for g in got))
    assert total <= 3 * C * (1 + 1e-4)  # three patients, each at most C


def test_patient_level_needs_the_patients():
    with pytest.raises(Exception, match="patient of each"):
        make_private(module=torch.nn.Linear(2, 2), optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1),
                     num_samples=10, batch_size=2, steps=1, max_grad_norm=1.0, noise_multiplier=1.0, sampling_unit="patient")


# --------------------------------------------------------------------------- what a run folder publishes


TINY = dict(dataset="simulated-mimic-cxr", model="tiny-bert", method="lora", epsilon=4.0, seed=0, batch_size=12,
            physical_batch_size=12, num_epochs=1, lr=1e-2, max_length=32, n_bootstrap=50)


def _patient_dataset(credentialed: bool):
    ds = make_dataset(120, seed=2)  # 84 / 18 / 18 reports: patients of 3 never straddle two splits
    return dataclasses.replace(ds, patient_ids=tuple(f"p{i // 3}" for i in range(len(ds))), credentialed=credentialed)


def test_privacy_json_records_the_mode_the_unit_and_whether_the_adapter_is_a_dp_release(tmp_path):
    ds = _patient_dataset(credentialed=False)
    secure = run({**TINY, "privacy_unit": "patient"}, run_dir=tmp_path / "secure", dataset=ds, progress=False)
    p = secure.privacy
    assert p["dp_randomness"] == "secure" and p["privacy_unit"] == "patient" and p["n_patients"] == 28
    assert p["delta"] == pytest.approx(1e-5) and p["sample_rate"] == pytest.approx(12 / 84)
    assert p["release_terms"]["dp_release"] and "one patient with all of their reports" in p["release_terms"]["covers"][0]
    replay = run({**TINY, "dp_randomness": "reproducible"}, run_dir=tmp_path / "replay", dataset=ds, progress=False)
    terms = replay.privacy["release_terms"]
    assert replay.privacy["dp_randomness"] == "reproducible" and not terms["dp_release"]
    assert terms["release"].startswith("not a DP release")
    assert replay.config.dp_randomness == "reproducible"  # and config.json holds no secret: only the mode


def _without_training_positives(ds, label: int = 0):
    """``ds`` with no positive training report for one label (the run warns about it when it may)."""
    labels = ds.labels.copy()
    labels[np.asarray(ds.splits) == "train", label] = 0
    return dataclasses.replace(ds, labels=labels)


def test_a_private_run_on_credentialed_data_writes_no_training_statistic(tmp_path):
    import warnings

    from privrad.pipeline import UntrainableLabelWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cred = run({**TINY, "dp_randomness": "reproducible"}, run_dir=tmp_path / "cred",
                   dataset=_without_training_positives(_patient_dataset(True)), progress=False)
    # a label without a positive training report is a training statistic: not said (it would reach the notebook)
    assert not [w for w in caught if issubclass(w.category, UntrainableLabelWarning)]
    terms = cred.privacy["release_terms"]
    assert terms["withheld"] == list(TRAINING_STATISTICS)
    curve = json.loads((cred.run_dir / "curve.json").read_text())["steps"]
    assert curve and all(set(row) <= set(CURVE_PUBLIC_KEYS) for row in curve)
    assert any("epsilon_spent" in row for row in curve)
    assert "empty_batches" not in json.loads((cred.run_dir / "privacy.json").read_text())
    config = json.loads((cred.run_dir / "config.json").read_text())
    assert set(config["n_truncated"]) == {"validation", "test"}
    assert "gpu_peak_gb" not in config["runtime"] and "train_s" in config["runtime"]
    # the same run on public data publishes them, and says they are not covered
    with pytest.warns(UntrainableLabelWarning, match="no positive example in the training split"):
        pub = run({**TINY, "dp_randomness": "reproducible"}, run_dir=tmp_path / "pub",
                  dataset=_without_training_positives(_patient_dataset(False)), progress=False)
    assert "gpu_peak_gb" in pub.info["runtime"]
    assert pub.privacy["release_terms"]["withheld"] == [] and "empty_batches" in pub.privacy
    assert all({"loss", "batch_size"} <= set(row) for row in pub.curve)
    assert any("training-split label prevalence" in s for s in pub.privacy["release_terms"]["does_not_cover"])
    # identical training (reproducible, same seed): only what is published differs
    assert [r["lr"] for r in pub.curve] == [r["lr"] for r in read_run(cred.run_dir).curve]
    assert pub.metrics["weighted_f1"] == cred.metrics["weighted_f1"]


def test_a_withholding_run_shows_no_loss_on_its_progress_bar(data, capsys):
    """The bar reaches a notebook's output when a notebook trains with ``progress=True`` (the lab
    notebook does): a run that withholds the loss shows ε only."""
    cfg = RunConfig(model="tiny-bert", epsilon=8.0, batch_size=8, physical_batch_size=8, num_epochs=1, lr=5e-2, seed=3)
    for withheld in ((), tuple(TRAINING_STATISTICS)):
        capsys.readouterr()
        train(build_model("tiny-bert", 14, seed=0), data, cfg, delta=1e-3, progress=True, withheld=withheld)
        bar = capsys.readouterr().err
        assert "eps=" in bar  # the scan can find what the bar shows …
        assert ("loss=" in bar) == (not withheld)  # … and the loss only where it is published


def test_the_auto_physical_batch_probe_of_a_withholding_run_never_reads_the_training_lengths():
    """``physical_batch_size: auto`` on a GPU measures memory on probe rows and records their width
    in config.json: for a run that withholds ``longest_report`` they are placeholders of max_length
    tokens — the same for any training split — and they run through the real classifier (with its
    cached frozen-layer features) as a chunk of reports does."""
    from privrad.data.tokenize import collate
    from privrad.features import Classifier, frozen_features
    from privrad.train import example_losses, probe_rows

    cfg = RunConfig(model="tiny-bert", epsilon=8.0, batch_size=8, max_length=48, lora_layers=1)
    tok = load_tokenizer("tiny-bert")
    net = Classifier(build_model("tiny-bert", 14, method="lora", lora_layers=1, seed=0))
    assert net.frozen_layers  # rows carry frozen-layer features
    splits = []
    for seed, words in ((1, 6), (2, 12)):  # two training splits of different report lengths
        ds = make_dataset(40, seed=seed).split("train")
        ds = dataclasses.replace(ds, texts=[" ".join(t.split()[:words]) for t in ds.texts])
        enc = EncodedDataset(tokenize_dataset(ds, tok, max_length=cfg.max_length), ds.labels, ds.label_mask)
        enc.features = frozen_features(net, enc.encoded, key_value=True)
        splits.append(enc)
    longest = [max(len(x) for x in d.encoded.input_ids) for d in splits]
    assert longest[0] < longest[1] <= cfg.max_length
    public = [probe_rows(d, cfg) for d in splits]
    assert [w for _, w in public] == longest  # published runs probe their longest reports
    hidden = [probe_rows(d, cfg, lengths_public=False) for d in splits]
    assert [w for _, w in hidden] == [cfg.max_length] * 2
    (rows_a, _), (rows_b, _) = hidden
    assert all(all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(ra, rb)) for ra, rb in zip(rows_a, rows_b))
    for rows, _ in (public[1], hidden[0]):
        batch = collate(rows, splits[0].encoded.pad_token_id)
        assert batch["features"].shape[:2] == batch["input_ids"].shape
        logits = net(**{k: batch[k] for k in ("input_ids", "attention_mask", "features")})
        example_losses(logits.float(), batch).mean().backward()
        assert logits.shape == (6, 14) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        net.zero_grad(set_to_none=True)
