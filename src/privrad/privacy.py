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
    from pathlib import Path

    from privrad import __version__
    from privrad.io import atomic_write_json, cache_lock, privrad_cache

    if cache_dir is None:
        folder = privrad_cache("calibration")
    else:
        folder = None if str(cache_dir).strip().lower() in ("", "off", "0", "none") else Path(cache_dir).expanduser() / "calibration"
    if folder is None:
        return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)

    key = json.dumps([repr(float(target_epsilon)), repr(float(delta)), repr(float(sample_rate)), int(steps), accountant,
                      CALIBRATION_RTOL, __version__])
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

#: Units a DP guarantee can protect. Today one report; issue 8 adds "patient" (one clipped
#: contribution per patient) through the same ``make_private`` call.
SAMPLING_UNITS = ("report",)


class PrivateTraining:
    """DP-SGD for one training run, as :func:`make_private` assembled it.

    The training loop needs four things from it and nothing else:

    * ``batches``: the logical batches, one list of example indices per step (Poisson sampling:
      each unit is in a batch independently with probability ``sample_rate``; a batch may be empty);
    * ``module``: the model wrapped for per-sample gradients (call it like the model);
    * ``backward(losses, last=...)``: per-example losses of one physical chunk → per-sample
      gradients; on the logical batch's last chunk also clip, sum, noise and step;
    * ``close()``: remove the hooks, check the accountant saw every step, return the history.
    """

    def __init__(self, *, module, optimizer, batches, accountant, noise_multiplier: float, sample_rate: float,
                 steps: int, grad_sample_mode: str):
        self.module, self.optimizer, self.batches = module, optimizer, batches
        self.accountant, self.noise_multiplier, self.sample_rate = accountant, noise_multiplier, sample_rate
        self.steps, self.grad_sample_mode = steps, grad_sample_mode

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's (noise multiplier, sample rate, steps) segments, grown by every real step."""
        return self.accountant.history

    @property
    def steps_taken(self) -> int:
        return int(sum(t for _, _, t in self.accountant.history))

    def backward(self, losses, *, last: bool) -> None:
        """Backward one physical chunk's per-example ``losses``; step on the logical batch's ``last`` chunk.

        The loss is the chunk mean; Opacus rescales the per-sample gradients it collects and
        divides the noisy sum by the expected batch size (``loss_reduction="mean"``).
        """
        self.optimizer.signal_skip_step(do_skip=not last)
        with warnings.catch_warnings():  # Opacus' hooks on modules after frozen embeddings: harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self.grad_sample_mode == "ghost":  # norms first, then a second backward with clipped losses
                from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

                DPTensorFastGradientClipping(self.module, self.optimizer, losses, "mean").backward()
            else:
                losses.mean().backward()
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
                 sample_generator=None, noise_generator=None, sampling_unit: str = "report") -> PrivateTraining:
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
    which is the caller's policy. ``sampling_unit`` names what one Poisson draw and one clipped
    contribution are: ``"report"`` today (the privacy unit of the guarantee).
    """
    from opacus.accountants import create_accountant
    from opacus.optimizers import get_optimizer_class
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if sampling_unit not in SAMPLING_UNITS:
        raise PrivacyError(f"sampling_unit {sampling_unit!r} is not supported; use one of {', '.join(SAMPLING_UNITS)}.")
    if not (1 <= batch_size <= num_samples) or steps < 1 or not max_grad_norm > 0:
        raise PrivacyError(f"DP-SGD needs 1 ≤ batch_size ≤ num_samples, steps ≥ 1 and max_grad_norm > 0 "
                           f"(got batch_size {batch_size}, num_samples {num_samples}, steps {steps}, max_grad_norm {max_grad_norm}).")
    if (noise_multiplier is None) == (target_epsilon is None):
        raise PrivacyError("give make_private either noise_multiplier or target_epsilon (with delta), not both or neither.")
    sample_rate = batch_size / num_samples
    if noise_multiplier is None:
        noise_multiplier = cached_noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant=accountant)
    net = grad_sample_module(module, grad_sample_mode=grad_sample_mode, max_grad_norm=max_grad_norm)
    dp_optimizer = get_optimizer_class("flat", False, grad_sample_mode)(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, expected_batch_size=batch_size,
        loss_reduction="mean", generator=noise_generator)
    acc = create_accountant(accountant)
    dp_optimizer.attach_step_hook(acc.get_optimizer_hook_fn(sample_rate=sample_rate))
    batches = UniformWithReplacementSampler(num_samples=num_samples, sample_rate=sample_rate,
                                            generator=sample_generator, steps=steps)
    return PrivateTraining(module=net, optimizer=dp_optimizer, batches=batches, accountant=acc,
                           noise_multiplier=float(noise_multiplier), sample_rate=sample_rate, steps=steps,
                           grad_sample_mode=grad_sample_mode)
