"""Run configuration: plain data, one name per idea.

The same names are used everywhere: in code, in notebook ``parameters`` cells, in study
profiles (``studies/*.yml``), on the command line (``--set lora_r=16``) and in the book.
Non-private training is ``epsilon = None`` (shown as ∞), never a magic number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from privrad.errors import ConfigError

METHODS = ("lora", "full")


@dataclass(frozen=True)
class RunConfig:
    # what is trained on what
    dataset: str = "simulated-mimic-cxr"
    data_dir: str = "data/simulated/mimic-cxr"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = "minilm-l6"
    method: str = "lora"  # "lora" | "full"
    seed: int = 0
    # privacy: epsilon None = non-private; delta None = privrad's default (see privacy.default_delta)
    epsilon: float | None = 1.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    # optimisation
    num_epochs: float = 3
    batch_size: int = 64  # expected logical batch size; sample_rate = batch_size / n_train
    physical_batch_size: int = 32  # memory-bound micro-batch; does not change the maths
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int = 128
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None = the model family's default (query, value)
    lora_layers: int | None = None  # LoRA in the top lora_layers layers only (BERT family); None = every layer
    train_pooler: bool = True  # under LoRA, train the pooler with the classifier (the head), or keep it frozen
    # evaluation
    threshold: str = "tuned"  # "fixed" (0.5) | "tuned" (per label, on the validation split)
    n_bootstrap: int = 1000

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(
                f"unknown run parameter(s) {', '.join(unknown)}; known parameters are: {', '.join(sorted(names))}."
            )
        d = dict(d)
        if d.get("lora_targets") is not None:
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls(**d)

    def replace(self, **changes: Any) -> "RunConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of every field (the data_dir path excluded: the
        dataset is identified by its content fingerprint instead)."""
        d = self.to_dict()
        d.pop("data_dir")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def epsilon_label(epsilon: float | None) -> str:
    """How an epsilon is shown: ``∞`` for non-private, otherwise ``%g``."""
    return "∞" if epsilon is None else f"{epsilon:g}"
