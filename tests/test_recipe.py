"""The default recipe is one recipe: the Open-i and course profiles apply it unchanged, and the
tuning sweep varies only what it tunes around it (learning rate, pooler, LoRA targets, epochs, batch)."""

from pathlib import Path

import pytest

from privrad import profiles

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ("lora_layers", "train_pooler", "lora_r", "lora_alpha", "lora_targets", "batch_size", "num_epochs", "lr",
          "max_grad_norm", "physical_batch_size")


def _recipe(name, model="minilm-l6"):
    points = profiles.expand(profiles.load_profile(name, root=ROOT))
    return {(p.config.epsilon is None): {k: getattr(p.config, k) for k in RECIPE} for p in points
            if p.config.model == model and p.config.lora_targets is None and not p.config.train_pooler}


@pytest.mark.parametrize("name, model", [("openi", "minilm-l6"), ("course", "minilm-l6")])
def test_the_open_i_profiles_apply_the_default_recipe_unchanged(name, model):
    default, profile = _recipe("default", model), _recipe(name, model)
    assert set(default) == set(profile) == {True, False}  # private and non-private
    assert profile == default


def test_the_tuning_sweep_varies_only_what_it_tunes_around_the_recipe_and_contains_it():
    default = _recipe("default")
    points = profiles.expand(profiles.load_profile("tune", root=ROOT))
    tune = [{k: getattr(p.config, k) for k in RECIPE} for p in points]
    for private in (True, False):
        assert default[not private] in tune  # the chosen recipe is one of the tuned points
    tuned = ("lr", "train_pooler", "lora_targets", "num_epochs", "batch_size", "physical_batch_size")
    for cfg in tune:
        assert {k: v for k, v in cfg.items() if k not in tuned} == {k: v for k, v in default[False].items() if k not in tuned}
    assert default[True] == default[False]  # one recipe for DP-SGD and non-private LoRA
    assert {p.entry.simulate["seed"] for p in points} == {1}  # never the study's seed-0 reports
    assert {e.simulate["seed"] for e in profiles.load_profile("default", root=ROOT).datasets} == {0}
