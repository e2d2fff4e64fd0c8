"""The privacy accounting: δ policy, noise calibration, the ε spent, cross-checks.

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
