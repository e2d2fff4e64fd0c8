"""Which GPUs a run may use, and how runs share them.

* :func:`visible_gpus` and :func:`gpu_memory_mb`: what this machine offers (``CUDA_VISIBLE_DEVICES``,
  ``nvidia-smi``), read without creating a CUDA context.
* :class:`Slot` and :class:`SlotPool`: where :class:`privrad.executors.LocalExecutor` places runs —
  ``runs_per_gpu`` slots on each GPU (or ``jobs`` CPU slots), one run each at a time.
* :func:`resolve_device`, :func:`gpu_memory_cap` and :func:`gpu_peak_gb`: inside a run, the device it
  trains on, its share of that GPU's memory (``PRIVRAD_GPU_MEMORY_GB``, set by the executor) made
  binding, and the memory it used (config.json's ``runtime``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Sequence

from privrad.errors import ConfigError


def visible_gpus() -> list[str]:
    """GPU indices this process may use (empty on CPU machines)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # pragma: no cover
        return []


def gpu_memory_mb(gpus: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``{gpu: (free MB, total MB)}`` of the given GPUs (indices or UUIDs, as in
    ``CUDA_VISIBLE_DEVICES``), read with ``nvidia-smi`` without creating a CUDA context here."""
    import shutil

    if not shutil.which("nvidia-smi"):
        raise ConfigError("cannot read the GPUs' free memory: nvidia-smi is not on PATH; install the NVIDIA driver "
                          "tools, or set the profile's gpu.memory_gb to null to start runs without the check.")
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=False).stdout
    rows = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            rows[parts[0]] = rows[parts[1]] = (float(parts[2]), float(parts[3]))
    missing = [g for g in gpus if g.strip() not in rows]
    if missing:
        raise ConfigError(f"nvidia-smi does not list GPU {missing[0]} (CUDA_VISIBLE_DEVICES); check the variable.")
    return {g: rows[g.strip()] for g in gpus}


#: The least GPU memory a run is given when a profile does not say what its runs need: a CUDA
#: context with torch's kernels loaded takes about 0.5-1 GB before any model.
MIN_GPU_MEMORY_GB = 1.0


@dataclass(frozen=True)
class Slot:
    """Where one run executes: a GPU and its slot number on it (``gpu`` None: a CPU slot)."""

    index: int
    gpu: str | None = None
    number: int = 0

    @property
    def label(self) -> str:
        return f"cpu:{self.number}" if self.gpu is None else f"gpu{self.gpu}:{self.number}"


class SlotPool:
    """Free slots, handed out one run each. ``acquire`` takes a free slot or waits (the run is
    queued) until one is released; a slot is never handed out twice at once, and releasing a
    slot that is not taken is refused (a bug)."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = list(slots)
        self._free = list(self.slots)
        self._cond = threading.Condition()

    def acquire(self, timeout: float | None = None) -> Slot | None:
        """A free slot, or None if none was released within ``timeout`` seconds (None: wait)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._free), timeout=timeout):
                return None
            return self._free.pop(0)

    def release(self, slot: Slot) -> None:
        with self._cond:
            if slot in self._free or slot not in self.slots:
                raise RuntimeError(f"slot {slot.label} released but it was not taken")
            self._free.append(slot)
            self._cond.notify()

    @property
    def busy(self) -> list[Slot]:
        with self._cond:
            return [s for s in self.slots if s not in self._free]


def resolve_device(device: str | None) -> str:
    """The torch device a run trains on: ``device`` as given (None: the first visible GPU, else
    the CPU); a GPU asked for where torch sees none is refused in one sentence. On a GPU, this
    process's memory share is made binding (:func:`gpu_memory_cap`)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no GPU; use device 'cpu' or install a CUDA build of torch.")
    if str(device).startswith("cuda"):
        gpu_memory_cap(device)
    return str(device)


def gpu_memory_cap(device: str) -> float | None:
    """This process's share of its GPU in GB, from ``PRIVRAD_GPU_MEMORY_GB`` (set by the
    executor when several runs share a GPU, see :class:`privrad.executors.LocalExecutor`), made
    binding with ``torch.cuda.set_per_process_memory_fraction``: a run that outgrows its share
    fails with an out-of-memory error instead of starving its neighbours. None without a share."""
    import os

    import torch

    text = os.environ.get("PRIVRAD_GPU_MEMORY_GB")
    if not text:
        return None
    try:
        share = float(text)
    except ValueError:
        raise ConfigError(f"PRIVRAD_GPU_MEMORY_GB = {text!r} is not a number of gigabytes; unset it or give e.g. 20.") from None
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, share / total), dev)
    return share


def gpu_peak_gb(device: str) -> float | None:
    """Peak GPU memory this process allocated (GB), on a GPU; None on a CPU."""
    import torch

    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**30 if str(device).startswith("cuda") else None
