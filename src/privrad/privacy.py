"""Everything about the privacy guarantee: δ policy, noise calibration, accounting, cross-checks.

DP-SGD (Abadi et al. 2016) with Poisson sampling at rate ``sample_rate = batch_size / n_train``,
per-example clipping at ``max_grad_norm`` and Gaussian noise of std ``noise_multiplier ×
max_grad_norm`` is a composition of ``steps`` Poisson-subsampled Gaussian mechanisms. Its
(ε, δ) is computed by:

* the **PRV accountant** (Gopi et al. 2021, Opacus ``PRVAccountant``): used to calibrate the
  noise multiplier to a target ε and to report the ε actually spent (an upper bound);
* the **PLD accountant** of Google's ``dp_accounting`` (an independent implementation) as a
  cross-check recorded beside it;
* the **RDP accountant** (``dp_accounting``), looser, reported for comparison with older papers.

The spent ε is computed from what training actually did: the (noise multiplier, sample rate,
steps) history recorded by the Opacus accountant at every real optimizer step, including the
steps whose Poisson batch was empty (they still add noise and are still counted).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Sequence

import numpy as np

from privrad.errors import PrivacyError

#: Relative slack of the calibration: spent ε lands in [(1 - CALIBRATION_RTOL) × target, target].
CALIBRATION_RTOL = 0.015

#: Stated precision of the PLD cross-check, as a share of the target ε: its discretisation
#: interval is chosen so that ``steps × interval`` (the most its pessimistic rounding can add
#: to ε) is this share of the target.
PLD_PRECISION = 0.02


def default_delta(n_train: int) -> float:
    """privrad's default δ: ``min(1e-5, n_train ** -1.1)``.

    What δ means: (ε, δ)-DP bounds, for every set S of trained models and neighbouring datasets
    D, D', ``P[M(D) ∈ S] ≤ e^ε P[M(D') ∈ S] + δ``. δ is an additive slack on that bound, not
    literally "the probability that the guarantee fails" (that reading describes the stronger
    *probabilistic* DP); it must be small next to ``1 / n_train`` because a mechanism that
    publishes one random training report verbatim is (0, 1/n_train)-DP.

    1e-5 is the value used throughout the DP-SGD literature (Abadi et al. 2016; Opacus'
    examples). ``n_train ** -1.1`` (a rule of thumb in the spirit of Ponomareva et al. 2023,
    "How to DP-fy ML") takes over above about 35 000 training reports. It keeps δ below 1/n, but
    not far below: ``δ × n_train = n_train ** -0.1``, i.e. δ is only 2.8× below 1/n at 35 000
    reports and 3.5× below at 250 000. Set ``delta`` explicitly for a larger margin. On
    all of MIMIC-CXR the default falls below 1e-5 (about 1.4e-6 at 200 000 training reports),
    so the same ε is then a slightly stronger statement than the paper's, not the same one;
    the book's privacy chapter gives the numbers (:func:`delta_table`).
    """
    if n_train < 1:
        raise PrivacyError(f"the training split has {n_train} examples; DP training needs at least one.")
    return float(min(1e-5, n_train ** -1.1))


def check_epsilon(epsilon) -> float | None:
    """``None`` (non-private) or a finite positive float; refuse anything else."""
    if epsilon is None:
        return None
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise PrivacyError(f"epsilon {epsilon!r} is not a number; give a positive number, or null/inf for non-private training.") from None
    if math.isinf(eps) and eps > 0:
        return None
    if not (eps > 0) or math.isnan(eps):
        raise PrivacyError(f"epsilon {epsilon!r} must be a positive number; give e.g. 1, or null/inf for non-private training.")
    return eps


def check_delta(delta: float, n_train: int) -> float:
    """δ must lie in (0, 1/n_train): a larger δ allows releasing whole records."""
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise PrivacyError(f"delta {delta!r} is not a number; leave it unset for privrad's default.") from None
    if not (0 < d < 1 / n_train):
        raise PrivacyError(
            f"delta {delta!r} must lie in (0, 1/n_train) = (0, {1 / n_train:.3g}) for n_train = {n_train}; "
            f"leave it unset for privrad's default ({default_delta(n_train):.3g})."
        )
    return d


def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *,
                    accountant: str = "prv", eps_error: float | None = None) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps (one homogeneous segment)."""
    return epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta, accountant=accountant, eps_error=eps_error)


def epsilon_from_history(history: Sequence[tuple[float, float, int]], delta: float, *,
                         accountant: str = "prv", eps_error: float | None = None,
                         pld_interval: float | None = None) -> float:
    """ε of a history of ``(noise_multiplier, sample_rate, steps)`` segments.

    ``accountant``: ``"prv"`` (Opacus; upper bound, with ``eps_error`` its absolute precision,
    default 0.01), ``"rdp"`` (Opacus), ``"pld"`` or ``"rdp-dp_accounting"`` (Google's dp_accounting).
    """
    history = tuple((float(s), float(q), int(t)) for s, q, t in history if int(t) > 0)
    if not history:
        return 0.0
    return _epsilon(history, float(delta), accountant, eps_error, pld_interval)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str, eps_error: float | None,
             pld_interval: float | None) -> float:
    """:func:`epsilon_from_history`'s arithmetic, remembered in this process: a run asks the same
    question twice (the cached noise multiplier's check before training and privacy.json's ε
    after it; at ε = 0.01 each PRV evaluation takes seconds)."""
    if accountant in ("pld", "rdp-dp_accounting"):
        import dp_accounting
        from dp_accounting import dp_event

        events = [dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), t)
                  for s, q, t in history]
        if accountant == "pld":
            acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=pld_interval or 1e-4)
        else:
            acc = dp_accounting.rdp.RdpAccountant()
        logging.disable(logging.WARNING)  # RDP logs every order it excludes (while composing, too); not a user concern
        try:
            acc.compose(dp_event.ComposedDpEvent(events))
            return float(acc.get_epsilon(delta))
        finally:
            logging.disable(logging.NOTSET)
    from opacus.accountants import create_accountant

    try:
        acc = create_accountant(accountant)
    except ValueError:
        raise PrivacyError(f"unknown accountant {accountant!r}; use 'prv' (default) or 'rdp'.") from None
    acc.history = list(history)
    with warnings.catch_warnings():  # PRV sizes its domain with RDP, which warns about its alpha grid
        warnings.simplefilter("ignore")
        if accountant == "prv":
            return float(acc.get_epsilon(delta, eps_error=0.01 if eps_error is None else eps_error))
        return float(acc.get_epsilon(delta))


def prv_bounds(history: Sequence[tuple[float, float, int]], delta: float, eps_error: float) -> tuple[float, float, float]:
    """``(lower, estimate, upper)`` of Opacus' PRV accountant for a history.

    Gopi et al. (2021) bound the true ε of the discretised, truncated PRV: it lies in
    ``[lower, upper]``, an interval of width about ``2 × eps_error`` (its stated precision).
    ``upper`` is what :func:`epsilon_from_history` reports.
    """
    history = [(float(s), float(q), int(t)) for s, q, t in history if int(t) > 0]
    if not history:
        return 0.0, 0.0, 0.0
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    delta_error = delta / 1000  # Opacus' default in PRVAccountant.get_epsilon
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dprv = acc._get_dprv(eps_error=eps_error, delta_error=delta_error)
        low, est, up = dprv.compute_epsilon(delta, delta_error, eps_error)
    return float(low), float(est), float(up)


def pld_bounds(history: Sequence[tuple[float, float, int]], delta: float, precision: float) -> tuple[float, float]:
    """``(upper − steps × interval, upper)`` from dp_accounting's PLD, at an absolute ``precision``.

    The PLD accountant rounds each step's privacy loss *up* to a grid of spacing ``interval``
    (pessimistic discretisation), so its ε is an upper bound that overstates the true ε by at
    most ``steps × interval``; the interval is chosen as ``precision / steps``.
    """
    history = [(float(s), float(q), int(t)) for s, q, t in history if int(t) > 0]
    if not history:
        return 0.0, 0.0
    steps = sum(t for _, _, t in history)
    interval = precision / steps
    up = epsilon_from_history(history, delta, accountant="pld", pld_interval=interval)
    return max(0.0, up - steps * interval), up


def cross_check(reporting: tuple[float, float], pld: tuple[float, float], target: float | None) -> dict:
    """Do the reporting accountant and the PLD cross-check agree, and which ε is reported?

    Each accountant gives an interval that contains the true ε at its stated precision
    (:func:`prv_bounds`, :func:`pld_bounds`); two correct accountants must give intersecting
    intervals, so ``agrees`` is exactly "the intervals intersect" — no further tolerance.
    ``pld_above_target`` flags a PLD upper bound above the target ε (calibration used the
    reporting accountant). ``epsilon_spent`` is the reporting accountant's upper bound when
    they agree and the larger of the two upper bounds when they do not.
    """
    (r_low, r_up), (p_low, p_up) = reporting, pld
    agrees = bool(p_low <= r_up and r_low <= p_up)
    return {
        "agrees": agrees,
        "pld_above_target": bool(target is not None and p_up > target),
        "epsilon_spent": float(r_up if agrees else max(r_up, p_up)),
        "reporting_interval": [float(r_low), float(r_up)],
        "pld_interval": [float(p_low), float(p_up)],
    }


def _prv_eps_error(target_epsilon: float) -> float:
    # The PRV upper bound exceeds its estimate by about eps_error: make that 1 % of the target
    # (0.01 absolute, Opacus' default, is as large as the whole budget at ε = 0.01).
    return min(0.01, 0.01 * target_epsilon)


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, *,
                               accountant: str = "prv") -> float:
    """The smallest noise multiplier (within 1.5 % in ε) whose ε after ``steps`` is ≤ the target.

    Bisection on the accountant's ε (monotone decreasing in the noise multiplier), as in
    Opacus' ``get_noise_multiplier``, but (1) bracketed with RDP (analytic, an upper bound on ε;
    where RDP's orders cannot reach the target at all, as for ε = 0.01 at δ ≤ 1e-8, with the
    pessimistic PLD, also an upper bound), (2) narrowed with dp_accounting's PLD, and (3)
    finished with the reporting accountant (PRV)
    at a precision scaled to the target, so that ε = 0.01 calibrates in seconds and tightly
    (Opacus' default 0.01 absolute tolerance would accept any ε in [0, 0.01], and its PRV
    search at a 1 % precision took 60-150 s here).
    """
    eps = check_epsilon(target_epsilon)
    if eps is None:
        raise PrivacyError("cannot calibrate noise for a non-private run (epsilon is null/inf).")
    if not (0 < sample_rate <= 1) or steps < 1:
        raise PrivacyError(f"sample_rate {sample_rate} and steps {steps} must satisfy 0 < sample_rate ≤ 1 and steps ≥ 1.")
    err = _prv_eps_error(eps) if accountant == "prv" else None

    def eps_of(sigma: float) -> float:
        return epsilon_from_history([(sigma, sample_rate, steps)], delta, accountant=accountant, eps_error=err)

    # bracket with PLD (fast), then verify/extend with the chosen accountant
    def pld(sigma: float) -> float:  # PLD: the starting point
        return epsilon_from_history([(sigma, sample_rate, steps)], delta, accountant="pld",
                                    pld_interval=min(1e-3, eps / 100))

    def rdp(sigma: float) -> float:  # RDP: analytic and fast; an upper bound on ε, so it brackets
        return epsilon_from_history([(sigma, sample_rate, steps)], delta, accountant="rdp-dp_accounting")

    max_sigma = 1e4
    hi, upper = 1.0, rdp
    while upper(hi) > eps:
        hi *= 2
        if hi > max_sigma:
            # RDP's finite grid of orders puts a floor under its ε that grows with log(1/δ)
            # (about 0.01 at δ = 1e-8): below it RDP cannot certify the target whatever the
            # noise. The pessimistic PLD is an upper bound too: bracket with it instead.
            if upper is rdp and pld(max_sigma) <= eps:
                hi, upper = 1.0, pld
                continue
            raise _unreachable(eps, delta, sample_rate, steps)
    lo = hi / 2
    while pld(lo) <= eps and lo > 1e-3:
        hi, lo = lo, lo / 2
    for _ in range(30):  # PLD bisection to 0.5 % in sigma
        if hi - lo <= 0.005 * hi:
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pld(mid) <= eps else (mid, hi)
    # refine with the reporting accountant, starting from the PLD answer (usually 1-3 evaluations)
    sigma = hi
    e = eps_of(sigma)
    if (1 - CALIBRATION_RTOL) * eps <= e <= eps:
        return float(sigma)
    if e > eps:
        lo, hi, eps_hi = sigma, sigma * 1.03, None
        while (eps_hi := eps_of(hi)) > eps:
            lo, hi = hi, hi * 1.1
            if hi > max_sigma:
                raise _unreachable(eps, delta, sample_rate, steps)
    else:
        lo, hi, eps_hi = sigma * 0.97, sigma, e
        while eps_of(lo) <= eps and lo > 1e-3:
            hi, lo = lo, lo / 1.1
        eps_hi = eps_of(hi)
    while eps_hi < (1 - CALIBRATION_RTOL) * eps:
        mid = (lo + hi) / 2
        e = eps_of(mid)
        if e <= eps:
            hi, eps_hi = mid, e
        else:
            lo = mid
        if hi - lo < 1e-6 * hi:
            break
    return float(hi)


def _unreachable(eps, delta, sample_rate, steps) -> PrivacyError:
    return PrivacyError(
        f"epsilon = {eps:g} at delta = {delta:.3g} is not reachable with sample_rate = {sample_rate:.4g} over "
        f"{steps} steps even with a noise multiplier of 10^4; use more training reports or a smaller "
        "batch_size (lower sample rate), fewer num_epochs (fewer steps), or a larger epsilon."
    )


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


def cached_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, *,
                            accountant: str = "prv", cache_dir: str | None = None) -> float:
    """:func:`calibrate_noise_multiplier`, remembered on disk and re-checked on every use.

    A study calibrates the same (ε, δ, sample rate, steps) once per model and seed; at ε = 0.01
    one calibration costs tens of seconds of CPU. The cache keeps the answer in ``cache_dir``
    (default ``$PRIVRAD_CACHE_DIR``, else ``~/.cache/privrad``; ``PRIVRAD_CACHE_DIR=off`` disables
    it), one small JSON file per setting, keyed by the setting, the accountant, privrad's version
    and the versions of opacus and dp-accounting.

    What the cache does and does not promise:

    * A cached σ is used only if the reporting accountant, evaluated once now, puts its ε in
      ``[(1 - CALIBRATION_RTOL) × target, target]`` — the condition calibration itself ensures —
      otherwise it is recalibrated. So the σ a run uses always meets the target under the
      accountant installed now; the privacy report is recomputed from the training history
      either way.
    * Calibration is deterministic, so with the same key the cached σ is the σ a fresh
      calibration returns. The check cannot tell a cached σ from another σ inside the accepted
      band (a cache file copied from elsewhere or edited by hand): such a σ is still valid for
      the target, but the run's metrics may differ slightly from an uncached run.
    """
    import hashlib
    import json
    from pathlib import Path

    from privrad import __version__
    from privrad.io import atomic_write_json, cache_lock, privrad_cache

    if cache_dir is None:
        folder = privrad_cache("calibration")
    else:
        folder = None if str(cache_dir).strip().lower() in ("", "off", "0", "none") else Path(cache_dir).expanduser() / "calibration"
    if folder is None:
        return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)

    from importlib.metadata import version

    key = json.dumps([repr(float(target_epsilon)), repr(float(delta)), repr(float(sample_rate)), int(steps), accountant,
                      CALIBRATION_RTOL, __version__, version("opacus"), version("dp-accounting")])
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    with cache_lock(path):  # runs started together calibrate once; the others wait, then verify
        try:
            sigma = float(json.loads(path.read_text())["noise_multiplier"])
        except (OSError, ValueError, KeyError, TypeError):
            sigma = None
        if sigma is not None:
            eps = check_epsilon(target_epsilon)
            err = _prv_eps_error(eps) if accountant == "prv" else None
            spent = epsilon_from_history([(sigma, sample_rate, steps)], delta, accountant=accountant, eps_error=err)
            if (1 - CALIBRATION_RTOL) * eps <= spent <= eps:
                return sigma
        sigma = calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)
        try:
            atomic_write_json(path, {"key": json.loads(key), "noise_multiplier": sigma})
        except OSError:  # a read-only home: calibrate every time, as before
            pass
    return sigma


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


def delta_table(n_trains: Sequence[int]) -> list[dict]:
    """privrad's default δ for training sets of these sizes, and how far below 1/n it is."""
    return [{"n_train": int(n), "delta": default_delta(n), "delta_times_n": default_delta(n) * n,
             "one_over_n_divided_by_delta": 1 / (n * default_delta(n))} for n in n_trains]


def delta_cost(target_epsilon: float, n_train: int, sample_rate: float, steps: int, *, reference_delta: float = 1e-5) -> dict:
    """How much the same noise spends at privrad's default δ for ``n_train`` instead of ``reference_delta``.

    The noise multiplier is found by bisection on the PLD accountant so that ε at
    ``reference_delta`` is ``target_epsilon`` (to 0.1 %); then ε is recomputed at
    :func:`default_delta` ``(n_train)``. A quick comparison for the book, not a calibration: the
    PLD runs at a coarse discretisation (``target_epsilon / 1000``), both numbers alike.
    """
    interval = target_epsilon / 1000

    def eps(sigma: float, delta: float) -> float:
        return epsilon_from_history([(sigma, sample_rate, steps)], delta, accountant="pld", pld_interval=interval)

    lo, hi = 0.1, 1.0
    while eps(hi, reference_delta) > target_epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid, reference_delta) <= target_epsilon else (mid, hi)
    delta = default_delta(n_train)
    return {"n_train": int(n_train), "sample_rate": sample_rate, "steps": int(steps), "noise_multiplier": hi,
            "reference_delta": reference_delta, "epsilon_at_reference_delta": eps(hi, reference_delta),
            "default_delta": delta, "epsilon_at_default_delta": eps(hi, delta)}
