import pytest
import torch

from privrad.errors import ConfigError
from privrad.models import build_model, get_model_spec, known_models, load_tokenizer, minilm_path


def test_registry_names_and_stand_ins():
    names = known_models()
    for n in ("bert-small", "bert-medium", "albert-base", "minilm-l6", "minilm-l3", "minilm-albert", "tiny-bert", "tiny-albert"):
        assert n in names
    assert get_model_spec("bert-small").source == "prajjwal1/bert-small"
    assert get_model_spec("albert-base").source == "albert/albert-base-v2"
    stand_ins = {get_model_spec(n).stands_in_for for n in ("minilm-l3", "minilm-l6", "minilm-albert")}
    assert stand_ins == {"bert-small", "bert-medium", "albert-base"}
    assert get_model_spec("minilm-albert").family == "albert"
    assert get_model_spec("minilm-l6").lora_targets == ("query", "value")
    assert get_model_spec(minilm_path()).family == "bert"  # a local path works too


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'.*minilm-l6"):
        get_model_spec("gpt-9")


def test_unreachable_hub_model_suggests_offline_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load model 'bert-small' from 'prajjwal1/bert-small'.*'minilm-l6' or a local model folder"):
        build_model("bert-small", 3)
    with pytest.raises(ConfigError, match="minilm-l6"):
        load_tokenizer("someone/not-a-model")


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'qlora'; known methods are: lora, full"):
        build_model("tiny-bert", 3, method="qlora")


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-albert"])
def test_lora_trains_only_adapters_and_head(name):
    model = build_model(name, 5, seed=0)
    assert model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("query" in n for n in trainable) and any("value" in n for n in trainable)
    full = build_model(name, 5, method="full", seed=0)
    assert all(p.requires_grad for p in full.parameters())


def test_bad_lora_target_is_refused():
    with pytest.raises(ConfigError, match="LoRA target module.*nope"):
        build_model("tiny-bert", 3, lora_targets=("nope",))


def test_pretrained_stand_ins_carry_minilm_weights():
    from transformers import BertModel

    bert = BertModel.from_pretrained(minilm_path())
    l3 = build_model("minilm-l3", 4, method="full", seed=0)
    assert l3.config.num_hidden_layers == 3
    assert torch.equal(l3.bert.encoder.layer[2].attention.self.query.weight, bert.encoder.layer[2].attention.self.query.weight)
    alb = build_model("minilm-albert", 4, method="full", seed=0)
    layer = alb.albert.encoder.albert_layer_groups[0].albert_layers[0]
    assert torch.equal(layer.attention.query.weight, bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(layer.ffn.weight, bert.encoder.layer[0].intermediate.dense.weight)
    assert torch.equal(alb.albert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert alb.config.num_hidden_layers == 3 and alb.config.num_hidden_groups == 1
