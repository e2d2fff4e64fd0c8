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

import logging
import math
import warnings
from typing import Sequence

from privrad.errors import PrivacyError

#: Relative slack of the calibration: spent ε lands in [(1 - CALIBRATION_RTOL) × target, target].
CALIBRATION_RTOL = 0.015


def default_delta(n_train: int) -> float:
    """privrad's default δ: ``min(1e-5, n_train ** -1.1)``.

    1e-5 is the value used throughout the DP-SGD literature (Abadi et al. 2016; Opacus'
    examples) and so keeps results comparable with the paper. δ is the probability that the
    guarantee fails outright, so it must be well below ``1 / n_train`` (a mechanism that
    publishes one random record has δ = 1/n); for training sets larger than ~35 000 reports
    1e-5 is no longer well below 1/n and δ shrinks as ``n_train ** -1.1``, the rule of thumb of
    Ponomareva et al. 2023 ("How to DP-fy ML", §5.2).
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
    history = [(float(s), float(q), int(t)) for s, q, t in history if int(t) > 0]
    if not history:
        return 0.0
    if accountant in ("pld", "rdp-dp_accounting"):
        import dp_accounting
        from dp_accounting import dp_event

        events = [dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(s)), t)
                  for s, q, t in history]
        if accountant == "pld":
            acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=pld_interval or 1e-4)
        else:
            acc = dp_accounting.rdp.RdpAccountant()
        acc.compose(dp_event.ComposedDpEvent(events))
        logging.disable(logging.WARNING)  # RDP logs every order it excludes; not a user concern
        try:
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


def _prv_eps_error(target_epsilon: float) -> float:
    # The PRV upper bound exceeds its estimate by about eps_error: make that 1 % of the target
    # (0.01 absolute, Opacus' default, is as large as the whole budget at ε = 0.01).
    return min(0.01, 0.01 * target_epsilon)


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, *,
                               accountant: str = "prv") -> float:
    """The smallest noise multiplier (within 1.5 % in ε) whose ε after ``steps`` is ≤ the target.

    Bisection on the accountant's ε (monotone decreasing in the noise multiplier), as in
    Opacus' ``get_noise_multiplier``, but (1) bracketed with RDP (analytic, an upper bound on ε),
    (2) narrowed with dp_accounting's PLD, and (3) finished with the reporting accountant (PRV)
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
    hi = 1.0
    while rdp(hi) > eps:
        hi *= 2
        if hi > max_sigma:
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
                   accountant: str = "prv") -> dict:
    """The content of ``privacy.json``: what was promised, what was spent, and the cross-checks.

    ``history`` is the accountant history of the training that ran (one entry per segment of
    equal noise and sample rate), so ``steps`` counts real optimizer steps, empty batches included.
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
    if target_epsilon is None:
        return {**base, "epsilon_spent": None, "note": "non-private training: no noise, no clipping"}
    err = _prv_eps_error(target_epsilon)
    spent = epsilon_from_history(history, delta, accountant=accountant, eps_error=err)
    pld = epsilon_from_history(history, delta, accountant="pld")
    rdp = epsilon_from_history(history, delta, accountant="rdp-dp_accounting")
    return {
        **base,
        "epsilon_spent": spent,
        "prv_eps_error": err if accountant == "prv" else None,
        "cross_check": {
            "accountant": "pld (dp_accounting)",
            "epsilon_spent": pld,
            "abs_difference": abs(pld - spent),
            "rel_difference": abs(pld - spent) / spent if spent > 0 else 0.0,
            "agrees": bool(abs(pld - spent) <= 0.02 or abs(pld - spent) <= 0.02 * spent),
        },
        "rdp_epsilon": rdp,
        "history": [list(h) for h in history],
    }


def cached_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, *,
                            accountant: str = "prv", cache_dir: str | None = None) -> float:
    """:func:`calibrate_noise_multiplier`, remembered on disk and re-verified on every use.

    A study calibrates the same (ε, δ, sample rate, steps) once per model and seed: the default
    study 3 times, the paper grid 9 times; at ε = 0.01 one calibration costs 15–20 s of CPU.
    The cache keeps the answer in ``cache_dir`` (default ``$PRIVRAD_CACHE_DIR``, else
    ``~/.cache/privrad``; ``PRIVRAD_CACHE_DIR=off`` disables it), one small JSON file per setting.
    A cached noise multiplier is never trusted blindly: it is accepted only if the reporting
    accountant, evaluated once, puts its ε in ``[(1 - CALIBRATION_RTOL) × target, target]`` — the
    very condition calibration guarantees — otherwise it is recalibrated. The answer is the same
    number a fresh calibration returns, so results do not depend on the cache.
    """
    import hashlib
    import json
    import os
    from pathlib import Path

    root = cache_dir if cache_dir is not None else os.environ.get("PRIVRAD_CACHE_DIR", "~/.cache/privrad")
    if str(root).lower() in ("", "off", "0", "none"):
        return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)
    from privrad import __version__
    from privrad.io import atomic_write_json

    key = json.dumps([repr(float(target_epsilon)), repr(float(delta)), repr(float(sample_rate)), int(steps), accountant,
                      CALIBRATION_RTOL, __version__])
    path = Path(root).expanduser() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
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
