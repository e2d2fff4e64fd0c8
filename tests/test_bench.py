"""The benchmarks' tiny / dry-run modes, so that bench/ does not rot. No time is ever asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_step_benchmark_tiny_runs_every_method(tmp_path):
    import step

    out = tmp_path / "step.json"
    assert step.main(["--tiny", "--in-process", "--models", "tiny-bert", "tiny-albert", "--methods", "lora", "dp-lora",
                      "dp-lora-ghost", "dp-full", "--repeats", "1", "--out", str(out)]) == 0
    rows = {(r["model"], r["method"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 8
    for (model, method), r in rows.items():
        if (model, method) == ("tiny-albert", "dp-lora-ghost"):
            # Opacus refuses ghost clipping on ALBERT's reused layer: reported, not crashed
            assert r["status"] == "n/a" and "tying" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["median_s"] > 0 and r["peak_mb"] > 0 and r["time_ratio"] > 0
    assert rows[("tiny-bert", "lora")]["time_ratio"] == 1.0
    # LoRA trains a sliver of the weights; full fine-tuning all of them
    assert rows[("tiny-bert", "dp-full")]["trainable"] == rows[("tiny-bert", "dp-full")]["total"]
    assert rows[("tiny-bert", "dp-lora")]["trainable"] < rows[("tiny-bert", "dp-lora")]["total"] / 2


@pytest.mark.slow  # a whole benchmark, tiny: `make test`, not `make test-fast`
def test_fastpath_benchmark_tiny_times_every_variant(tmp_path, monkeypatch):
    import fastpath

    monkeypatch.setattr(fastpath.common, "OUT_DIR", tmp_path)  # the simulated reports go there too
    out = tmp_path / "fastpath.json"
    assert fastpath.main(["--tiny", "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(fastpath.VARIANTS) <= set(rows) and rows["before"]["ratio_to_before"] == 1.0
    assert all(rows[v]["median_s"] > 0 and rows[v]["cpu_s"] >= 0 for v in fastpath.VARIANTS)
    assert rows["frozen features (once per report)"]["reports_per_s"] > 0


def test_stepper_dp_lora_updates_only_trainable_weights():
    """The benchmark's step is a real DP-SGD step: LoRA weights move, the base stays put."""
    import torch

    import step
    from privrad.models import build_model

    model = build_model("tiny-bert", step.N_LABELS, method="lora", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    s = step.Stepper(model, "dp-lora", batch_size=4, physical_batch_size=2, device="cpu", lr=1e-2)
    s.step(step.synthetic_data(4, 16), [0, 1, 2, 3])
    s.detach()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable and any("lora_" in n for n in changed)


def test_shaped_model_folder_loads_through_privrad(tmp_path):
    import common
    from privrad.models import build_model, count_parameters, get_model_spec

    path = common.shaped_model_dir("tiny-albert-shape", tmp_path)
    assert get_model_spec(path).family == "albert"
    assert common.shaped_model_dir("tiny-albert-shape", tmp_path) == path  # written once
    m = build_model(path, 14, method="lora")
    assert 0 < count_parameters(m)["trainable"] < count_parameters(m)["total"]


def test_scaling_tiny_sweep(tmp_path):
    import scaling

    out = tmp_path / "scaling.json"
    assert scaling.main(["--tiny", "--in-process", "--skip-runs", "--out", str(out)]) == 0
    sweep = json.loads(out.read_text())["sweep"]
    assert {r["axis"] for r in sweep} == {"batch_size", "max_length"} and all(r["status"] == "ok" for r in sweep)
    assert all(r["tokens_per_s"] > 0 for r in sweep)


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path):
    """bench/gpu.sh --dry-run: the whole GPU script on tiny shapes on the CPU — interleaved steps
    at old and new settings, the bf16 gradient check, cold and warmed-up kernels, the 'before'
    runs through privrad.run, and the paper profile's sweep through the study runner (2 runs at
    once; runs_per_gpu said to mean nothing without a GPU), then both grid estimates."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["device"] == "cpu"
    assert {r["group"] for r in out["steps"]["rows"]} == {"old", "new-fp32", "new-bf16"}
    assert all(c["within_tolerance"] for c in out["steps"]["bf16_check"])
    assert out["kernel"]["warm_ok"] and out["kernel"]["cold_s"] > 0
    assert len(out["before"]["runs"]) == 2 and out["before"]["grid"]["total_s"] > 0
    after = out["after"]
    assert after["slots"] == 2 and after["points"] == len(after["runs"]) == 6
    assert any("has no effect here: no GPU is visible" in n for n in after["notes"])
    assert {r["physical_batch_source"] for r in after["runs"]} == {"auto on a CPU"}
    assert after["grid"]["wall_s"] > after["grid"]["wall_lower_s"] > 0 and after["grid"]["missing_points"] == 0
    assert after["grid"]["unestimated_points"] == 0 and after["grid"]["wall_scaled_as_before_s"] > 0
    assert all(r["first_step_s"] > 0 and r["setup_s"] >= 0 for r in after["runs"])
    assert len(out["f1_parity"]) == 2 and out["calibration"] and out["dp_ratio"]["run_per_step"]
    assert "=== summary on cpu ===" in p.stdout and "before (sequential" in p.stdout and "after  (2 runs at once" in p.stdout


@pytest.mark.slow  # subprocesses, papermill or large data: `make test`, not `make test-fast`
def test_cached_noise_multiplier_is_the_fresh_answer_and_never_trusts_a_bad_entry(tmp_path):
    import json

    from privrad.privacy import CALIBRATION_RTOL, cached_noise_multiplier, compute_epsilon

    args = (1.0, 1e-5, 0.05, 60)
    fresh = cached_noise_multiplier(*args, cache_dir=str(tmp_path))  # a miss: calibrates and stores
    assert (1 - CALIBRATION_RTOL) <= compute_epsilon(fresh, 0.05, 60, 1e-5) <= 1.0
    (entry,) = (tmp_path / "calibration").glob("*.json")
    assert cached_noise_multiplier(*args, cache_dir=str(tmp_path)) == fresh  # from the cache, verified
    entry.write_text(json.dumps({"noise_multiplier": 0.3}))  # a wrong entry: ε(0.3) far above the target
    assert cached_noise_multiplier(*args, cache_dir=str(tmp_path)) == fresh
    assert json.loads(entry.read_text())["noise_multiplier"] == fresh  # repaired
