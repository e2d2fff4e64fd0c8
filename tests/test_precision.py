"""bf16 autocast and the physical batch chosen at run time (``precision``, ``physical_batch_size: auto``).

The bf16 check runs on the CPU (torch's CPU autocast); ``bench/gpu.sh`` runs the same check,
:func:`privrad.train.per_sample_gradients` against float32, on the GPU with the paper's shapes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from privrad.config import RunConfig
from privrad.data.tokenize import EncodedDataset, collate, tokenize_dataset
from privrad.errors import ConfigError
from privrad.features import Classifier
from privrad.models import build_model, load_tokenizer
from privrad.train import (BF16_GRAD_RTOL, BF16_NORM_RTOL, CPU_PHYSICAL_BATCH_SIZE, auto_physical_batch_size,
                           bf16_gradient_error, per_sample_gradients, resolve_precision)

from _synthetic import make_dataset, no_dropout


def _batch(model: str, n: int = 8):
    ds = make_dataset(40, 0).split("train")
    enc = tokenize_dataset(ds, load_tokenizer(model), max_length=64)
    data = EncodedDataset(enc, ds.labels, ds.label_mask)
    return collate([data[i] for i in range(n)], enc.pad_token_id), data


def _net(model: str):
    m = no_dropout(build_model(model, 14, method="lora", lora_r=8, seed=0))  # the same network in both precisions
    torch.manual_seed(1)
    for name, p in m.named_parameters():  # LoRA B starts at 0 (A's gradient would be 0): give it a trained-like value
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    return Classifier(m)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-albert", pytest.param("minilm-l6", marks=pytest.mark.slow)])  # a real 6-layer model: `make test`
def test_bf16_per_sample_gradients_match_float32_within_tolerance(model):
    """What DP-SGD clips and sums: each report's gradient, bf16 autocast against float32, within
    BF16_GRAD_RTOL (relative L2 per report) and BF16_NORM_RTOL (its norm, which decides clipping)."""
    batch, _ = _batch(model)
    net = _net(model)
    fp32 = per_sample_gradients(net, batch, "fp32")
    bf16 = per_sample_gradients(net, batch, "bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape == bf16.shape and fp32.shape[0] == 8
    assert not torch.equal(fp32, bf16)  # bf16 did run
    err = bf16_gradient_error(fp32, bf16)
    assert err["grad_rtol"] <= BF16_GRAD_RTOL and err["norm_rtol"] <= BF16_NORM_RTOL, err
    # the check can fail: gradients of a perturbed network are far outside the tolerance
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n or "classifier" in n:
                p.mul_(1.5)
    assert bf16_gradient_error(fp32, per_sample_gradients(net, batch, "fp32"))["grad_rtol"] > BF16_GRAD_RTOL


def test_per_sample_gradients_are_each_reports_own_gradient():
    batch, _ = _batch("tiny-bert", n=3)
    net = _net("tiny-bert")
    g = per_sample_gradients(net, batch, "fp32")
    one = {k: v[1:2] for k, v in batch.items()}
    net.zero_grad(set_to_none=True)
    from privrad.train import example_losses

    example_losses(net(input_ids=one["input_ids"], attention_mask=one["attention_mask"]), one).sum().backward()
    direct = torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.requires_grad and p.grad is not None])
    net.zero_grad(set_to_none=True)
    assert torch.allclose(g[1], direct, rtol=1e-4, atol=1e-7)


def test_precision_and_physical_batch_values_are_checked():
    assert RunConfig(physical_batch_size="auto", precision="bf16").validate().physical_batch_size == "auto"
    with pytest.raises(ConfigError, match=r"precision 'fp16' is unknown; use one of auto, fp32, bf16"):
        RunConfig(precision="fp16").validate()
    with pytest.raises(ConfigError, match=r"physical_batch_size = 'big' is invalid; give a positive integer, or auto"):
        RunConfig(physical_batch_size="big").validate()
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"


def test_auto_physical_batch_on_a_cpu_is_said_and_capped():
    _, data = _batch("tiny-bert")
    net = _net("tiny-bert")
    size, source = auto_physical_batch_size(net, data, RunConfig(model="tiny-bert", batch_size=8), "fp32")
    n = len(data)  # a private batch holds 8 reports on average: plan for 8 + 4 standard deviations
    assert size == math.ceil(8 + 4 * math.sqrt(8 * (1 - 8 / n))) and source == "auto on a CPU"
    size, _ = auto_physical_batch_size(net, data, RunConfig(model="tiny-bert", batch_size=200, epsilon=None), "fp32")
    assert size == CPU_PHYSICAL_BATCH_SIZE


def test_a_bf16_run_with_an_auto_physical_batch_records_what_it_used(tmp_path):
    from privrad.pipeline import run

    ds = make_dataset(60, 0)
    cfg = dict(dataset=ds.name, model="tiny-bert", epsilon=1.0, batch_size=8, num_epochs=1, max_length=48, n_bootstrap=0,
               physical_batch_size="auto", precision="bf16")
    res = run(cfg, results_dir=tmp_path, dataset=ds, progress=False)
    info = json.loads((res.run_dir / "config.json").read_text())
    assert info["config"]["physical_batch_size"] == "auto" and info["config"]["precision"] == "bf16"
    n = info["split_sizes"]["train"]
    assert info["precision"] == "bf16" and info["physical_batch_source"] == "auto on a CPU"
    assert info["physical_batch_size"] == math.ceil(8 + 4 * math.sqrt(8 * (1 - 8 / n)))
    rt = info["runtime"]
    assert rt["calibrate_s"] >= 0 and 0 <= res.weighted_f1 <= 1
    assert 0 < rt["first_step_s"] and rt["setup_s"] >= 0 and rt["accounting_s"] > 0  # private: ε checkpoints
    assert rt["setup_s"] + rt["calibrate_s"] + rt["first_step_s"] + rt["accounting_s"] <= rt["train_s"]
    fp32 = run({**cfg, "precision": "auto"}, results_dir=tmp_path, dataset=ds, progress=False)
    assert json.loads((fp32.run_dir / "config.json").read_text())["precision"] == "fp32" and fp32.run_id != res.run_id


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the probe measures GPU memory; on a CPU auto is a fixed size")
def test_on_a_gpu_a_withholding_run_probes_max_length_placeholders_not_its_training_reports():
    """Issue 8: the probe's width is recorded in config.json. A run that withholds the training
    lengths records max_length, whatever its training reports; a published run, the longest one's."""
    _, data = _batch("tiny-bert")
    net = _net("tiny-bert").to("cuda")
    cfg = RunConfig(model="tiny-bert", batch_size=8, max_length=64)
    longest = max(len(x) for x in data.encoded.input_ids)
    size, source = auto_physical_batch_size(net, data, cfg, "bf16")
    assert f"at {longest} tokens," in source and size >= 1
    size, source = auto_physical_batch_size(net, data, cfg, "bf16", lengths_public=False)
    assert f"at {cfg.max_length} tokens (max_length" in source and size >= 1
