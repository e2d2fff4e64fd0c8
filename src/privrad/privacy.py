"""What the privacy guarantee is attached to: DP-SGD's wiring behind one façade, and what a run releases.

* :func:`make_private` (in the spirit of Opacus' ``make_private``) assembles DP-SGD for one training
  run — Poisson batches of reports or of patients (:class:`UnitSampler`), per-sample gradients
  (:func:`grad_sample_module`), clipping, noise and the accountant — and returns a
  :class:`PrivateTraining`, the only DP object the training loop (:mod:`privrad.train`) and
  ``bench/`` see.
* :func:`release_terms`: what a run's (ε, δ) covers, what it does not, and whether its adapter is a
  DP release (:data:`DP_RANDOMNESS`, :data:`PRIVACY_UNITS`, :data:`PUBLIC_SPLITS`,
  :data:`TRAINING_STATISTICS`); :func:`privacy_report` is a run's ``privacy.json`` — the accounting's
  numbers and these terms.

The accounting itself — δ policy, noise calibration, the ε spent, the PLD cross-check — is
:mod:`privrad.accounting`; its names are importable from here as well.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from privrad.accounting import (  # noqa: F401 (the accounting's names are importable from privrad.privacy too)
    CALIBRATION_RTOL, PLD_PRECISION, cached_noise_multiplier, calibrate_noise_multiplier, check_delta, check_epsilon,
    _prv_eps_error, compute_epsilon, cross_check, default_delta, delta_cost, delta_table, epsilon_from_history, pld_bounds,
    prv_bounds,
)
from privrad.errors import PrivacyError

# ------------------------------------------------------------------------------------ DP-SGD

#: Units a DP guarantee can protect (one Poisson draw and one clipped contribution each):
#: ``report``, or ``patient`` (all of a patient's reports in a batch together, their gradients
#: averaged into one contribution before clipping). The same list as :data:`PRIVACY_UNITS`.
SAMPLING_UNITS = ("report", "patient")


class UnitSampler:
    """Poisson sampling of units (patients): each unit joins a step's batch independently with
    probability ``sample_rate`` (Opacus' ``UniformWithReplacementSampler`` over the units), and a
    batch is the example indices of every unit drawn, each unit's examples together."""

    def __init__(self, units: np.ndarray, *, sample_rate: float, steps: int, generator=None):
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        order = np.argsort(units, kind="stable")
        bounds = np.searchsorted(units[order], np.arange(int(units.max()) + 2))
        self.members = [order[bounds[u]: bounds[u + 1]].tolist() for u in range(int(units.max()) + 1)]
        self.sampler = UniformWithReplacementSampler(num_samples=len(self.members), sample_rate=sample_rate,
                                                     generator=generator, steps=steps)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for drawn in self.sampler:
            yield [i for u in drawn for i in self.members[u]]


class PrivateTraining:
    """DP-SGD for one training run, as :func:`make_private` assembled it.

    The training loop needs five things from it and nothing else:

    * ``batches``: the logical batches, one list of example indices per step (Poisson sampling:
      each unit is in a batch independently with probability ``sample_rate``; a batch may be empty);
    * ``units``: under patient-level DP, the unit of each example (else ``None``): the loop keeps
      each unit's examples of a batch in one physical chunk, so that a unit is clipped once;
    * ``module``: the model wrapped for per-sample gradients (call it like the model);
    * ``backward(losses, last=..., indices=...)``: per-example losses of one physical chunk →
      per-sample gradients (one per unit); on the logical batch's last chunk also clip, sum,
      noise and step;
    * ``close()``: remove the hooks, check the accountant saw every step, return the history.
    """

    def __init__(self, *, module, optimizer, batches, accountant, noise_multiplier: float, sample_rate: float,
                 steps: int, grad_sample_mode: str, units: np.ndarray | None = None):
        self.module, self.optimizer, self.batches = module, optimizer, batches
        self.accountant, self.noise_multiplier, self.sample_rate = accountant, noise_multiplier, sample_rate
        self.steps, self.grad_sample_mode, self.units = steps, grad_sample_mode, units

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise multiplier, sample rate, steps) segments, grown by every real step."""
        return self.accountant.history

    @property
    def steps_taken(self) -> int:
        return int(sum(t for _, _, t in self.accountant.history))

    def backward(self, losses, *, last: bool, indices: Sequence[int] | None = None) -> None:
        """Backward one physical chunk's per-example ``losses``; step on the logical batch's ``last`` chunk.

        The loss is the chunk mean; Opacus rescales the per-sample gradients it collects and
        divides the noisy sum by the expected batch size (``loss_reduction="mean"``). Under
        patient-level DP, ``indices`` are the chunk's example indices: each example's loss is
        divided by its unit's number of examples in the chunk (all of the unit's examples in the
        batch) and the per-example gradients are summed per unit, so each unit contributes the
        gradient of its mean loss and is clipped once. An empty batch's dummy row (``indices``
        empty) weighs nothing and stays one row.
        """
        import torch

        self.optimizer.signal_skip_step(do_skip=not last)
        group = None
        if self.units is not None and indices is not None and len(indices):
            _, inverse, sizes = np.unique(self.units[np.asarray(indices)], return_inverse=True, return_counts=True)
            group = torch.as_tensor(inverse, device=losses.device)
            losses = losses / torch.as_tensor(sizes, dtype=losses.dtype, device=losses.device)[group]
        with warnings.catch_warnings():  # Opacus' hooks on modules after frozen embeddings: harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self.grad_sample_mode == "ghost":  # norms first, then a second backward with clipped losses
                from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

                DPTensorFastGradientClipping(self.module, self.optimizer, losses, "mean").backward()
            else:
                losses.mean().backward()
        if group is not None:  # one row per unit: the sum of its examples' gradients
            n_groups = int(group.max()) + 1
            for p in self.optimizer.params:
                gs = getattr(p, "grad_sample", None)
                if gs is not None:
                    p.grad_sample = torch.zeros((n_groups, *gs.shape[1:]), dtype=gs.dtype, device=gs.device).index_add_(0, group, gs)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> list[tuple[float, float, int]]:
        self.module.remove_hooks()
        return [tuple(h) for h in self.accountant.history]


def _linear_grad_sample_float32(layer, activations, backprops):
    """Opacus' ``nn.Linear`` per-sample gradient, computed in float32 whatever the autocast.

    Under bf16 autocast a Linear's activations and output gradients are bf16, and Opacus'
    sampler would keep the per-sample gradients (and so their norms, clipping and sum) in bf16.
    Upcast here, they are float32 like the weights they update; in float32 this is Opacus' own
    computation (``einsum("n...i,n...j->nij", backprops, activations)``)."""
    import torch

    a, b = activations[0].float(), backprops.float()
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", b, a)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...k->nk", b)
    return out


def grad_sample_module(module, *, grad_sample_mode: str = "hooks", max_grad_norm: float = 1.0):
    """``module`` wrapped for per-sample gradients as DP-SGD computes them (Opacus'
    ``GradSampleModule``, batch first, mean loss; float32 per-sample gradients of Linear layers
    under any autocast). ``hooks`` forbids accumulating two batches' per-sample gradients
    (Poisson sampling); ``ghost`` is ghost clipping (benchmarks). ``remove_hooks()`` unwraps."""
    import torch
    from opacus.grad_sample.utils import register_grad_sampler, wrap_model

    register_grad_sampler(torch.nn.Linear)(_linear_grad_sample_float32)
    if grad_sample_mode == "ghost":
        return wrap_model(module, grad_sample_mode="ghost", batch_first=True, loss_reduction="mean",
                          max_grad_norm=max_grad_norm, use_ghost_clipping=True)
    net = wrap_model(module, grad_sample_mode=grad_sample_mode, batch_first=True, loss_reduction="mean")
    net.forbid_grad_accumulation()  # Poisson sampling: per-sample grads of two batches must never mix
    return net


def make_private(*, module, optimizer, num_samples: int, batch_size: int, steps: int, max_grad_norm: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 delta: float | None = None, accountant: str = "prv", grad_sample_mode: str = "hooks",
                 sample_generator=None, noise_generator=None, secure_noise: bool = False,
                 sampling_unit: str = "report", units: Sequence | None = None) -> PrivateTraining:
    """Make a model and optimizer private: Poisson batches, per-sample gradients, clipping, noise, accounting.

    The one place privrad wires Opacus (the spirit of ``PrivacyEngine.make_private``, with every
    quantity the guarantee depends on passed explicitly):

    * **Poisson sampling** at ``sample_rate = batch_size / num_samples`` for exactly ``steps``
      logical steps (Opacus' ``UniformWithReplacementSampler``; ``PrivacyEngine`` would use
      ``1 / len(loader)``, which differs when ``num_samples`` is not a multiple of ``batch_size``);
    * **per-sample gradients** by Opacus' ``GradSampleModule`` (``hooks``: exact for LoRA on BERT
      and ALBERT, whose reused layer gets its per-use gradients summed; ``ghost``: ghost clipping,
      for benchmarks), never accumulated across two logical batches;
    * **clipping and noise** by the flat ``DPOptimizer`` wrapped around ``optimizer``: each
      example's gradient clipped to ``max_grad_norm``, Gaussian noise of std ``noise_multiplier ×
      max_grad_norm`` added to the sum, divided by the expected ``batch_size``;
    * **accounting**: an Opacus accountant (``prv`` or ``rdp``) hooked on the optimizer records every
      real step, empty batches included.

    Give ``noise_multiplier``, or ``target_epsilon`` and ``delta`` (calibrated with
    :func:`cached_noise_multiplier`). DP randomness comes from two generators: ``sample_generator``
    (which examples form each batch) and ``noise_generator`` (the Gaussian noise, on the
    parameters' device). ``None`` leaves each to torch's global generator; passing them decides
    whether a run's DP randomness is reproducible (seeded) or secret (seeded from OS entropy),
    which is the caller's policy (``privrad.train.dp_generators``). ``secure_noise`` draws the
    noise as Opacus' secure mode does (a sum of several Gaussian draws, robust to floating-point
    attacks).

    ``sampling_unit`` names what one Poisson draw and one clipped contribution are — the privacy
    unit of the guarantee: ``"report"``, or ``"patient"`` with ``units`` the unit (patient id) of
    each of the ``num_samples`` examples. Patient-level DP samples units at the same rate
    ``batch_size / num_samples`` (so a batch still holds ``batch_size`` reports on average and an
    epoch has the same steps), each sampled unit contributes the gradient of its reports' mean
    loss clipped to ``max_grad_norm``, the noisy sum is divided by the expected number of units
    per batch, and the accountant composes the same (σ, q, steps) with the patient as the unit.
    """
    from opacus.accountants import create_accountant
    from opacus.optimizers import get_optimizer_class
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if sampling_unit not in SAMPLING_UNITS:
        raise PrivacyError(f"sampling_unit {sampling_unit!r} is not supported; use one of {', '.join(SAMPLING_UNITS)}.")
    unit_of = None
    if sampling_unit == "patient":
        if units is None or len(units) != num_samples:
            raise PrivacyError(f"patient-level DP needs the patient of each of the {num_samples} training examples (units).")
        if grad_sample_mode != "hooks":
            raise PrivacyError(f"patient-level DP sums per-report gradients per patient: use grad_sample_mode 'hooks', not {grad_sample_mode!r}.")
        unit_of = np.unique(np.asarray(units), return_inverse=True)[1]
    if not (1 <= batch_size <= num_samples) or steps < 1 or not max_grad_norm > 0:
        raise PrivacyError(f"DP-SGD needs 1 ≤ batch_size ≤ num_samples, steps ≥ 1 and max_grad_norm > 0 "
                           f"(got batch_size {batch_size}, num_samples {num_samples}, steps {steps}, max_grad_norm {max_grad_norm}).")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise PrivacyError("give make_private either noise_multiplier or target_epsilon (with delta), not both or neither.")
    sample_rate = batch_size / num_samples
    if noise_multiplier is None:
        noise_multiplier = cached_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)
    net = grad_sample_module(module, grad_sample_mode=grad_sample_mode, max_grad_norm=max_grad_norm)
    # the noisy sum is divided by the expected number of units per batch (reports, or patients)
    expected_units = batch_size if unit_of is None else sample_rate * (int(unit_of.max()) + 1)
    dp_optimizer = get_optimizer_class("flat", False, grad_sample_mode)(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, expected_batch_size=expected_units,
        loss_reduction="mean", generator=noise_generator, secure_mode=secure_noise)
    acc = create_accountant(accountant)
    dp_optimizer.attach_step_hook(acc.get_optimizer_hook_fn(sample_rate=sample_rate))
    if unit_of is None:
        batches = UniformWithReplacementSampler(num_samples=num_samples, sample_rate=sample_rate,
                                                generator=sample_generator, steps=steps)
    else:
        batches = UnitSampler(unit_of, sample_rate=sample_rate, steps=steps, generator=sample_generator)
    return PrivateTraining(module=net, optimizer=dp_optimizer, batches=batches, accountant=acc,
                           noise_multiplier=float(noise_multiplier), sample_rate=sample_rate, steps=steps,
                           grad_sample_mode=grad_sample_mode, units=unit_of)


# ---------------------------------------------------------------------------- what a run releases

#: Where DP-SGD's randomness (the Poisson batches and the Gaussian noise) comes from:
#: ``secure`` — generators seeded from OS entropy, never recorded (the default; needed for the
#: guarantee to hold for the released adapter); ``reproducible`` — generators seeded from the
#: public run seed (teaching, tests; the adapter is then *not a DP release*).
DP_RANDOMNESS = ("secure", "reproducible")

#: What two neighbouring training sets differ by: one report (add/remove), or one patient with
#: all of their reports (patients are Poisson-sampled and contribute one clipped gradient each).
PRIVACY_UNITS = ("report", "patient")

#: The splits the book declares public: their statistics, metrics and the thresholds tuned on the
#: validation split are published without noise. The training split is the only one ε protects.
PUBLIC_SPLITS = ("validation", "test")

#: Statistics of the training split that a run could publish outside the accountant. For private
#: runs on credentialed data every one of them is withheld — by the run writer
#: (:func:`privrad.runs.withhold_training_statistics`) and, for what is printed or measured while
#: training, by the training loop (``train(..., withheld=...)``); otherwise they are published and
#: listed as not covered. Each value names the statistic, then (in brackets) where it would appear.
TRAINING_STATISTICS = {
    "loss": "per-step training loss (curve.json, the run notebook's loss plot)",
    "batch_size": "realised Poisson batch sizes (curve.json)",
    "empty_batches": "the count of empty Poisson batches (privacy.json)",
    "n_truncated": "how many training reports were cut at max_length (config.json)",
    "train_prevalence": "training-split label prevalence (run notebook, data chapter; the warning that a label has "
                        "no positive training report)",
    "longest_report": "the length of the longest training reports (as GPU memory: the probe of physical_batch_size "
                      "auto on a GPU, config.json's physical_batch_size and physical_batch_source; the peak GPU memory, "
                      "runtime.gpu_peak_gb)",
}


def withheld_statistics(*, private: bool, credentialed: bool) -> list[str]:
    """The :data:`TRAINING_STATISTICS` a run withholds: all of them for a private run on
    credentialed data, none otherwise (``release_terms["withheld"]``; the training loop and the
    run writer read it)."""
    return list(TRAINING_STATISTICS) if private and credentialed else []


def release_terms(*, private: bool, dp_randomness: str = "secure", privacy_unit: str = "report",
                  credentialed: bool, threshold: str, epsilon: float | None = None,
                  delta: float | None = None) -> dict:
    """What the (ε, δ) of a run covers, what it does not, and whether its adapter is a DP release.

    The answer to "may I publish this adapter?" is ``dp_release``: true only for a private run
    whose DP randomness was secret. ``covers`` and ``does_not_cover`` are sentences for
    ``privacy.json`` and the book; ``withheld`` names the training statistics this run did not
    publish (:data:`TRAINING_STATISTICS`).
    """
    if dp_randomness not in DP_RANDOMNESS:
        raise PrivacyError(f"dp_randomness {dp_randomness!r} is unknown; use one of {', '.join(DP_RANDOMNESS)}.")
    if privacy_unit not in PRIVACY_UNITS:
        raise PrivacyError(f"privacy_unit {privacy_unit!r} is unknown; use one of {', '.join(PRIVACY_UNITS)}.")
    withheld = withheld_statistics(private=private, credentialed=credentialed)
    public_splits = ("the validation and test splits are declared public: thresholds tuned on the validation split "
                     "and every validation or test metric and prediction (metrics.json, predictions.npz) are "
                     "computed from them without noise" if threshold == "tuned" else
                     "the test split is declared public: test metrics and predictions (metrics.json, predictions.npz) are "
                     "computed from it without noise; thresholds are fixed at 0.5, so no validation data is released")
    not_covered = [
        public_splits,
        "the training-split size n_train and the split sizes (the sample rate is computed from n_train)",
        "hyperparameters chosen by looking at results on private data (e.g. repeated runs with --set): "
        "that choice spends privacy no accountant counts",
        "wall-clock times in config.json (they vary with the realised Poisson batch sizes)",
        "the dataset fingerprint in config.json and the run id (a SHA-256 of every report: it reveals nothing about a "
        "report to someone who lacks the others, but one who holds every other report could test a candidate against it)",
    ]
    if not private:
        return {"dp_release": False, "release": "not a DP release: non-private training, no noise and no clipping",
                "covers": [], "does_not_cover": ["anything: the adapter and every output are functions of the training data without noise"],
                "withheld": [], "dp_randomness": None, "privacy_unit": None}
    eps = f"ε = {epsilon:.3g}, δ = {delta:.2g}" if epsilon is not None and delta is not None else "(ε, δ)"
    unit = ("one report: neighbouring training sets differ by adding or removing one report. A patient with k "
            "reports in the training split is protected only at about k·ε (group privacy: (kε, k·e^{(k-1)ε}·δ))"
            if privacy_unit == "report" else
            "one patient with all of their reports: neighbouring training sets differ by adding or removing one "
            "patient (patients are Poisson-sampled; each contributes one clipped gradient per step)")
    if not withheld:
        not_covered.append("published although computed from the training split without noise, because this dataset is not "
                           "credentialed: " + "; ".join(TRAINING_STATISTICS.values()))
    if dp_randomness == "reproducible":
        return {
            "dp_release": False,
            "release": "not a DP release: the Poisson batches and the noise were drawn from generators seeded by the "
                       "public run seed in config.json, so anyone can replay them; the accounted ε describes the "
                       "mechanism, not this adapter",
            "covers": [],
            "does_not_cover": ["the adapter and everything computed from it: its DP randomness is reproducible"] + not_covered,
            "withheld": withheld,
            "dp_randomness": dp_randomness, "privacy_unit": privacy_unit,
        }
    return {
        "dp_release": True,
        "release": f"a DP release at {eps} per {privacy_unit}: the adapter may be published under that guarantee, "
                   "with the split and hyperparameter caveats listed under does_not_cover",
        "covers": [
            f"the adapter (LoRA weights and the trained head) and anything computed from it alone, e.g. predictions on "
            f"new reports (post-processing): {eps}, the privacy unit being {unit}",
            "ε spent at checkpoints, the noise multiplier, the sample rate and the step count (they depend on the "
            "training split only through its size)",
        ],
        "does_not_cover": not_covered,
        "withheld": withheld,
        "dp_randomness": dp_randomness, "privacy_unit": privacy_unit,
    }


def privacy_report(*, target_epsilon: float | None, delta: float | None, noise_multiplier: float | None,
                   sample_rate: float, history: Sequence[tuple[float, float, int]], n_train: int,
                   planned_steps: int, batch_size: int, max_grad_norm: float | None,
                   accountant: str = "prv", dp_randomness: str = "secure", privacy_unit: str = "report",
                   n_patients: int | None = None, credentialed: bool = True, threshold: str = "tuned") -> dict:
    """The content of ``privacy.json``: what was promised, what was spent, the cross-checks, and
    what the guarantee covers (``release_terms``, :func:`release_terms`).

    ``history`` is the accountant history of the training that ran (one entry per segment of
    equal noise and sample rate), so ``steps`` counts real optimizer steps, empty batches included.
    ``dp_randomness`` and ``privacy_unit`` are the run's (see :data:`DP_RANDOMNESS`,
    :data:`PRIVACY_UNITS`); ``n_patients`` the training split's patients under patient-level DP.
    """
    steps = int(sum(t for _, _, t in history))
    base = {
        "private": target_epsilon is not None,
        "epsilon": target_epsilon,  # the target (the config's epsilon); None = non-private
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "sample_rate": sample_rate,
        "batch_size": batch_size,
        "n_train": n_train,
        "steps": steps,
        "planned_steps": planned_steps,
        "epochs": steps * sample_rate,
        "accountant": accountant,
    }
    private = target_epsilon is not None
    base.update(dp_randomness=dp_randomness if private else None, privacy_unit=privacy_unit if private else None)
    if private and privacy_unit == "patient":
        base["n_patients"] = n_patients
    if target_epsilon is None:
        return {**base, "epsilon_spent": None, "note": "non-private training: no noise, no clipping",
                "release_terms": release_terms(private=False, credentialed=credentialed, threshold=threshold)}
    err = _prv_eps_error(target_epsilon)
    if accountant == "prv":
        low, _, up = prv_bounds(history, delta, err)
    else:  # RDP: an upper bound with no stated lower bound
        low, up = 0.0, epsilon_from_history(history, delta, accountant=accountant)
    pld = pld_bounds(history, delta, PLD_PRECISION * target_epsilon)
    check = cross_check((low, up), pld, target_epsilon)
    spent = check["epsilon_spent"]
    rdp = epsilon_from_history(history, delta, accountant="rdp-dp_accounting")
    return {
        **base,
        "epsilon_spent": spent,
        "prv_eps_error": err if accountant == "prv" else None,
        "cross_check": {
            "accountant": "pld (dp_accounting)",
            "epsilon_spent": pld[1],
            "pld_precision": PLD_PRECISION * target_epsilon,
            "abs_difference": abs(pld[1] - up),
            **{k: v for k, v in check.items() if k != "epsilon_spent"},
            "rule": "agrees when the two accountants' intervals intersect (each holds the true ε at its stated "
                    "precision); ε spent is the larger upper bound when they do not",
        },
        "rdp_epsilon": rdp,
        "history": [list(h) for h in history],
        "release_terms": release_terms(private=True, dp_randomness=dp_randomness, privacy_unit=privacy_unit,
                                       credentialed=credentialed, threshold=threshold, epsilon=spent, delta=delta),
    }
