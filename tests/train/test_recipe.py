"""Recipes: the shipped ones validate and say what they reproduce; reading is strict; --set goes through it too."""

from __future__ import annotations

import math

import pytest

from re2tal_cli.errors import BadRecipeError
from re2tal_cli.train.recipe import RECIPES, FinetuneRecipe, Recipe, dump_yaml, load_recipe, recipe_from_mapping

SHIPPED = sorted(p.stem for p in RECIPES.glob("*.yaml"))
FINETUNE = sorted(p.stem for p in FinetuneRecipe.folder.glob("*.yaml"))


def test_the_recipes_the_issue_asks_for_are_shipped():
    assert set(SHIPPED) >= {
        "synthetic",
        "re2tal-thumos-swin3d-t",
        "re2tal-thumos-slowfast-r101",
        "re2tal-anet-swin3d-t",
        "re2tal-anet-slowfast-r101",
        "actionformer-thumos-i3d",
        "actionformer-anet-tsp",
    }


@pytest.mark.parametrize(
    ("kind", "name"), [(Recipe, n) for n in SHIPPED] + [(FinetuneRecipe, n) for n in FINETUNE], ids=lambda v: str(v)
)
def test_a_shipped_recipe_validates_round_trips_and_names_its_source(kind, name):
    recipe = load_recipe(name, kind=kind)
    assert recipe_from_mapping(__import__("yaml").safe_load(dump_yaml(recipe)), kind=kind) == recipe
    text = (kind.folder / f"{name}.yaml").read_text()
    header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
    assert "Source:" in header and ("Reported:" in header or "measured" in header)
    assert f"--recipe {name}" in header


@pytest.mark.parametrize("name", ["re2tal-thumos-swin3d-t", "re2tal-thumos-slowfast-r101"])
def test_re2tal_thumos_is_opentads_setting(name):
    r = load_recipe(name)
    assert (r.data.num_frames, r.data.size, r.data.sampling.value) == (1024, 224, "window")
    assert (r.train.lr, r.backbone.lr, r.train.weight_decay, r.train.optimizer.value) == (1e-4, 1e-5, 0.05, "adamw")
    assert r.train.batch_size * r.train.accumulate == 4 and r.train.warmup_epochs == 5
    assert r.train.cosine_epochs > r.train.epochs  # OpenTAD stops long before its cosine ends
    assert r.train.amp.value == "fp16" and r.train.ema_decay > 0 and r.train.clip_grad == 1.0
    assert r.backbone.frozen_bn and r.backbone.feature_length == 512
    assert r.backbone.drop_path == (0.2 if "swin" in name else 0.0)


@pytest.mark.parametrize("name", ["re2tal-anet-swin3d-t", "re2tal-anet-slowfast-r101"])
def test_re2tal_anet_is_opentads_setting(name):
    r = load_recipe(name)
    assert (r.data.num_frames, r.data.sampling.value, r.backbone.feature_length) == (768, "uniform", 192)
    assert (r.train.lr, r.backbone.lr) == (1e-3, 1e-5) and r.data.class_agnostic
    post = r.model.actionformer.postprocess
    assert (post.sigma, post.max_segments, post.multiclass) == (0.7, 100, False)
    assert (r.eval.protocol.value, r.eval.ext_topk, r.eval.fusion.value) == ("anet", 2, "product")


def test_finetune_recipes_are_the_papers_settings():
    assert set(FINETUNE) >= {
        "synthetic",
        "re2tal-kinetics-swin3d-t",
        "re2tal-kinetics-slowfast-r101",
        "dr2net-ssv2-vit-b",
    }
    swin, slowfast = (load_recipe(f"re2tal-kinetics-{a}", kind=FinetuneRecipe) for a in ("swin3d-t", "slowfast-r101"))
    assert (swin.train.optimizer.value, slowfast.train.optimizer.value) == ("adamw", "sgd")
    assert swin.schedule.kind.value == slowfast.schedule.kind.value == "re2" and swin.train.epochs == 10
    dr2 = load_recipe("dr2net-ssv2-vit-b", kind=FinetuneRecipe)
    s = dr2.schedule
    assert (s.kind.value, s.start_beta, s.update_every, s.unit.value, s.end_epoch) == ("dr2", 0.1, 2, "iteration", 5)
    assert dr2.train.batch_size * dr2.train.accumulate == 384 and (dr2.train.lr, dr2.train.epochs) == (1e-3, 40)


def test_a_train_tal_recipe_is_not_a_finetune_recipe():
    with pytest.raises(BadRecipeError, match="unknown recipe key model"):
        load_recipe(RECIPES / "synthetic.yaml", kind=FinetuneRecipe)


def test_feature_recipes_are_actionformers_settings():
    thumos, anet = load_recipe("actionformer-thumos-i3d"), load_recipe("actionformer-anet-tsp")
    assert (thumos.model.actionformer.max_seq_len, thumos.model.actionformer.window_size) == (2304, 19)
    assert anet.data.resample_to == 192 and anet.model.actionformer.window_size == (7, 7, 7, 7, 7, -1)
    assert anet.eval.fusion.value == "sqrt" and anet.data.class_agnostic


def test_set_values_are_read_as_yaml_and_validated():
    r = load_recipe("synthetic", ["train.lr=2e-4", "data.augment.crop_scale=[0.5, 1]", "backbone.drop_path=null",
                                  "model.actionformer.regression_ranges=[[0, 8], [8, 16], [16, 32], [32, 64], "
                                  "[64, inf]]"])  # fmt: skip
    assert r.train.lr == 2e-4 and r.data.augment.crop_scale == (0.5, 1.0) and r.backbone.drop_path is None
    assert r.model.actionformer.regression_ranges[-1] == (64.0, math.inf)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["trian.epochs=3"], "unknown recipe key trian; did you mean train?"),
        (["data.augment.flp=0.5"], "unknown recipe key data.augment.flp; did you mean data.augment.flip?"),
        (["train.epochs=2.5"], "recipe key train.epochs must be an integer, got 2.5"),
        (["data.in_memory=yes please"], "recipe key data.in_memory must be true or false"),
        (["train.amp=fp8"], "recipe key train.amp must be one of none, bf16, fp16, got 'fp8'"),
        (["train.epochs.max=3"], "train.epochs is not a section"),
        (["train.cosine_epochs=3"], "train.cosine_epochs (3.0) must be at least train.epochs"),
        (["train.ema_decay=1"], "train.ema_decay must be in [0, 1)"),
        (["model.actionformer.window_size=4"], "window_size must be odd"),
    ],
)
def test_recipe_errors_name_the_key_and_the_fix(sets, message):
    with pytest.raises(BadRecipeError) as error:
        load_recipe("synthetic", sets)
    assert message in str(error.value)


def test_a_recipe_file_that_is_not_a_mapping_is_one_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(BadRecipeError, match="a recipe is a mapping of sections, got list"):
        load_recipe(path)
    path.write_text("train: {epochs: [\n")
    with pytest.raises(BadRecipeError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(BadRecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
