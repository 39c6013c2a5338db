"""`re2tal import` and OpenTAD checkpoints as backbone sources: checkpoints written in the exact OpenTAD and
ActionFormer-release layouts from our own modules' weights, read back, and the outputs compared with the modules'.

The writers below rename our keys the other way round from the code under test, after the module names read off the
sources (ActionFormer release libs/modeling/{backbones,blocks,necks,meta_archs}.py; OpenTAD
opentad/models/{projections/actionformer_proj,bricks/{conv,transformer},necks/fpn,dense_heads/anchor_free_head,
backbones/{backbone_wrapper,re2tal_swin}}.py); the literal key sets pin them to those names.
"""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.localizers import create_localizer
from re2tal_cli.models import get_arch
from re2tal_cli.reversible.wiring import WiringName
from re2tal_cli.rewire import rewire
from re2tal_cli.train.recipe import load_recipe
from re2tal_cli.train.run import RunDir
from re2tal_cli.train.tal import TALModel
from re2tal_cli.train_tal import model_from_run

runner = CliRunner()
NUM_CLASSES = 3
RECIPE = """
model:
  localizer: actionformer
  actionformer: {embed_dim: 16, head_dim: 16, num_heads: 2, num_branch_blocks: 2, window_size: 3, max_seq_len: 32,
                 regression_ranges: [[0, 4], [4, 8], [8, 1000]], path_drop: 0.1}
train: {ema_decay: 0.999}
"""

# --- the two layouts, written from our keys ----------------------------------------------------------------------

_BLOCK = [  # ActionFormer's TransformerBlock (both libraries name it alike): ours → theirs
    (r"norm([12])\.", r"ln\1."),
    (r"attn\.(query|key|value)_conv\.weight", r"attn.\1_conv.conv.weight"),
    (r"scale1\.scale", "drop_path_attn.scale"),
    (r"scale2\.scale", "drop_path_mlp.scale"),
]
RELEASE = [
    (r"encoder\.embed_convs\.(\d+)\.", r"backbone.embd.\1.conv."),
    (r"encoder\.embed_norms\.", "backbone.embd_norm."),
    (r"encoder\.(stem|branch)\.", r"backbone.\1."),
    (r"neck\.norms\.", "neck.fpn_norms."),
    (r"(cls|reg)_head\.convs\.(\d+)\.", r"\1_head.head.\2.conv."),
    (r"(cls|reg)_head\.norms\.", r"\1_head.norm."),
    (r"cls_head\.output\.", "cls_head.cls_head.conv."),
    (r"reg_head\.output\.", "reg_head.offset_head.conv."),
    (r"reg_head\.scales\.", "reg_head.scale."),
]
OPENTAD = [
    (r"encoder\.embed_convs\.(\d+)\.", r"projection.embed.\1.conv."),
    (r"encoder\.embed_norms\.(\d+)\.", r"projection.embed.\1.norm."),
    (r"encoder\.(stem|branch)\.", r"projection.\1."),
    (r"neck\.norms\.", "neck.fpn_norms."),
    (r"(cls|reg)_head\.convs\.(\d+)\.", r"rpn_head.\1_convs.\2.conv."),
    (r"(cls|reg)_head\.norms\.(\d+)\.", r"rpn_head.\1_convs.\2.norm."),
    (r"(cls|reg)_head\.output\.", r"rpn_head.\1_head."),
    (r"reg_head\.scales\.", "rpn_head.scale."),
    (r"loss_normalizer", "rpn_head.loss_normalizer"),
]
SWIN_RE2 = [  # our swin3d → mmaction2's keys inside OpenTAD's Re²Swin (SwinTransformer3D_inv) and BackboneWrapper
    (r"(layers\.\d+\.blocks\.\d+)\.attn\.norm\.", r"\1.inv_block.Fm.norm1."),
    (r"(layers\.\d+\.blocks\.\d+)\.attn\.", r"\1.inv_block.Fm.attn."),
    (r"(layers\.\d+\.blocks\.\d+)\.mlp\.norm\.", r"\1.inv_block.Gm.norm2."),
    (r"(layers\.\d+\.blocks\.\d+)\.mlp\.", r"\1.inv_block.Gm.mlp."),
    (r"^norm\.", "norm3."),
]


def renamed(key: str, rules) -> str:
    for pattern, target in rules:
        key = re.sub(pattern, target, key)
    return key


def release_state(localizer_state: dict) -> dict:
    """The release keeps its LayerNorms' and drop-path scales' values as (1, C, 1) and its loss normaliser as a
    float (not in the state dict)."""
    out = {}
    for key, value in localizer_state.items():
        if key == "loss_normalizer":
            continue
        name = renamed(renamed(key, RELEASE), _BLOCK)
        per_channel = re.search(r"(ln[12]|_norm|norm\.\d+|embd_norm\.\d+|fpn_norms\.\d+)\.(weight|bias)$|scale$", name)
        out[f"module.{name}"] = value.reshape(1, -1, 1) if per_channel and value.ndim == 1 else value
    return out


def opentad_state(localizer_state: dict, backbone_state: dict | None = None) -> dict:
    out = {}
    for key, value in localizer_state.items():
        name = renamed(renamed(key, OPENTAD), _BLOCK)
        out[f"module.{name}"] = value.reshape(1, -1, 1) if name.endswith("drop_path_attn.scale") or name.endswith(
            "drop_path_mlp.scale") else value  # fmt: skip
    for key, value in (backbone_state or {}).items():
        out[f"module.backbone.model.backbone.{renamed(key, SWIN_RE2)}"] = value
    return out


def randomized(module: torch.nn.Module, seed: int) -> dict:
    """Every float tensor of the module drawn at random (so a misplaced one shows), loaded, returned."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if k.endswith("norm.weight") else 0.0)
             if v.is_floating_point() else v for k, v in module.state_dict().items()}  # fmt: skip
    module.load_state_dict(state)
    return state


def training_checkpoint(path, model_state: dict, ema_state: dict | None) -> None:
    saved = {"epoch": 3, "state_dict": model_state, "optimizer": {"state": {}, "param_groups": []}}
    if ema_state is not None:
        saved["state_dict_ema"] = ema_state
    torch.save(saved, path)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def tiny_localizer(recipe_path, channels: int):
    cfg = load_recipe(recipe_path)
    return create_localizer("actionformer", channels, NUM_CLASSES, cfg.model.actionformer).eval()


def outputs(localizer, channels: int):
    g = torch.Generator().manual_seed(5)
    feats, mask = torch.randn(2, channels, 32, generator=g), torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False
    out = localizer(feats, mask)
    return torch.cat([torch.cat(x, 1).flatten() for x in (out.cls_logits, out.offsets)])


def import_run(*args):
    return runner.invoke(app, ["import", *map(str, args)])


# --- the ActionFormer release: a features run -------------------------------------------------------------------


def test_release_key_names_are_the_release_modules(recipe):
    keys = set(release_state(tiny_localizer(recipe, 8).state_dict()))
    block = {f"module.backbone.stem.0.{k}" for k in (
        "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias",
        "drop_path_attn.scale", "drop_path_mlp.scale", "attn.query_conv.conv.weight", "attn.key_conv.conv.weight",
        "attn.value_conv.conv.weight",
        *(f"attn.{p}_norm.{w}" for p in ("query", "key", "value") for w in ("weight", "bias")),
        *(f"attn.{p}.{w}" for p in ("query", "key", "value", "proj") for w in ("weight", "bias")))}  # fmt: skip
    heads = {"module.cls_head.head.0.conv.weight", "module.cls_head.head.1.conv.weight",
             "module.cls_head.norm.0.weight", "module.cls_head.norm.1.bias", "module.cls_head.cls_head.conv.weight",
             "module.cls_head.cls_head.conv.bias", "module.reg_head.offset_head.conv.weight",
             "module.reg_head.scale.2.scale", "module.neck.fpn_norms.2.weight", "module.backbone.embd.0.conv.weight",
             "module.backbone.embd_norm.1.weight"}  # fmt: skip
    assert block <= keys and heads <= keys
    assert len({k for k in keys if k.startswith("module.backbone.stem.0.")}) == len(block)


def test_release_checkpoint_imports_as_features_run_with_ema_weights(recipe, tmp_path):
    channels = 8
    trained, averaged = tiny_localizer(recipe, channels), tiny_localizer(recipe, channels)
    trained_state, averaged_state = randomized(trained, 1), randomized(averaged, 2)
    extra = {"module.backbone.stem.0.attn.rel_pe": torch.zeros(1, 2, 1, 3)}  # use_rel_pe: nothing of ours holds it
    src = tmp_path / "epoch_003.pth.tar"
    training_checkpoint(src, release_state(trained_state), release_state(averaged_state) | extra)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    out = tmp_path / "run"
    result = import_run(src, "--out", out, "--recipe", recipe, "--classes", tmp_path / "classes.txt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"] == "actionformer-release" and report["mode"] == "features"
    assert report["entries"] == ["state_dict_ema", "state_dict"] and report["evaluated"] == "state_dict_ema"
    assert report["unmapped"] == ["module.backbone.stem.0.attn.rel_pe".removeprefix("module.")]
    assert report["not_in_source"] == ["localizer.loss_normalizer"] and report["classes"] == ["a", "b", "c"]

    model, cfg, meta = model_from_run(RunDir(out))
    assert meta["weights"] == "ema" and meta["model"]["classes"] == ["a", "b", "c"] and meta["epoch"] == 0
    assert cfg.source.mode.value == "features" and cfg.model.actionformer.embed_dim == 16
    assert torch.equal(outputs(model.localizer, channels), outputs(averaged, channels))
    assert not torch.equal(outputs(model.localizer, channels), outputs(trained, channels))
    written = load_file(out / "checkpoints/last/model.safetensors")  # the weights themselves, beside their EMA
    assert all(torch.equal(written[f"localizer.{k}"], v) for k, v in trained_state.items() if k != "loss_normalizer")


def test_checkpoint_without_ema_and_without_module_prefix(recipe, tmp_path):
    channels = 8
    trained = tiny_localizer(recipe, channels)
    state = {k.removeprefix("module."): v for k, v in release_state(randomized(trained, 3)).items()}
    src = tmp_path / "model.pth"
    training_checkpoint(src, state, None)
    result = import_run(src, "--out", tmp_path / "run", "--recipe", recipe, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["entries"] == ["state_dict"] and report["classes"] == ["class_0", "class_1", "class_2"]
    model, _, meta = model_from_run(RunDir(tmp_path / "run"))
    assert meta["weights"] == "model" and not (tmp_path / "run/checkpoints/last/ema.safetensors").exists()
    assert torch.equal(outputs(model.localizer, channels), outputs(trained, channels))


def test_shape_mismatch_names_the_key_and_both_shapes(recipe, tmp_path):
    src = tmp_path / "af.pth.tar"
    training_checkpoint(src, release_state(tiny_localizer(recipe, 8).state_dict()), None)
    out = tmp_path / "run"
    result = import_run(src, "--out", out, "--recipe", recipe, "--set", "model.actionformer.head_dim=8")
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "shape mismatch for cls_head.head.0.conv.weight" in message, message
    assert "checkpoint (16, 16, 3), the recipe's model (8, 16, 3)" in message, message
    assert not out.exists()


def test_class_count_must_match_and_unknown_file_is_refused(recipe, tmp_path):
    src = tmp_path / "af.pth.tar"
    training_checkpoint(src, release_state(tiny_localizer(recipe, 8).state_dict()), None)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    result = import_run(src, "--out", tmp_path / "run", "--recipe", recipe, "--classes", tmp_path / "classes.txt")
    assert result.exit_code == 2 and "2 classes, the checkpoint's classifier has 3" in result.stderr
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    result = import_run(tmp_path / "other.pth", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "neither an OpenTAD detector's nor the ActionFormer release's" in result.stderr
    assert not (tmp_path / "run").exists()


# --- OpenTAD: Re²Swin + ActionFormer, a frames run; and its backbone for rewire -----------------------------------


@pytest.fixture
def opentad(recipe, tmp_path):
    """An OpenTAD Re²TAL detector (swin3d-tiny, wired α=0, β=1) written from our modules: (file, the model of its
    weights, the model of its EMA)."""
    spec = get_arch("swin3d-tiny")
    models = []
    for seed in (11, 12):
        backbone = spec.create(num_classes=0)
        WiringName.REVERSIBLE.wiring.apply(backbone)
        model = TALModel(tiny_localizer(recipe, backbone.out_channels), backbone, spec.input).eval()
        randomized(model, seed)
        models.append(model)
    states = [opentad_state(m.localizer.state_dict(), m.backbone.state_dict()) for m in models]
    src = tmp_path / "epoch_119.pth"
    training_checkpoint(src, states[0], states[1])
    return src, models[0], models[1]


def test_opentad_key_names_are_opentads_modules(opentad):
    keys = set(torch.load(opentad[0], weights_only=True)["state_dict_ema"])
    expected = {
        "module.projection.embed.0.conv.weight", "module.projection.embed.0.norm.weight",
        "module.projection.stem.0.attn.query_conv.conv.weight", "module.projection.branch.1.drop_path_mlp.scale",
        "module.neck.fpn_norms.0.bias", "module.rpn_head.cls_convs.1.conv.weight",
        "module.rpn_head.reg_convs.0.norm.bias",
        "module.rpn_head.cls_head.weight", "module.rpn_head.reg_head.bias", "module.rpn_head.scale.2.scale",
        "module.rpn_head.loss_normalizer", "module.backbone.model.backbone.patch_embed.proj.weight",
        "module.backbone.model.backbone.layers.0.blocks.1.inv_block.Fm.norm1.weight",
        "module.backbone.model.backbone.layers.0.blocks.1.inv_block.Fm.attn.qkv.weight",
        "module.backbone.model.backbone.layers.0.blocks.1.inv_block.Fm.attn.relative_position_bias_table",
        "module.backbone.model.backbone.layers.1.blocks.0.inv_block.Gm.norm2.bias",
        "module.backbone.model.backbone.layers.1.blocks.0.inv_block.Gm.mlp.fc2.weight",
        "module.backbone.model.backbone.layers.0.downsample.reduction.weight",
        "module.backbone.model.backbone.norm3.weight",
    }  # fmt: skip
    assert expected <= keys, sorted(expected - keys)


def test_opentad_detector_imports_as_frames_run(opentad, recipe, tmp_path):
    src, trained, averaged = opentad
    out = tmp_path / "run"
    result = import_run(src, "--out", out, "--recipe", recipe, "--arch", "swin3d-tiny", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"] == "opentad" and report["mode"] == "end_to_end" and report["arch"] == "swin3d-tiny"
    assert report["wiring"]["alpha"] == 0 and report["wiring"]["beta"] == 1 and report["unmapped"] == []
    assert report["not_in_source"] == []
    model, cfg, meta = model_from_run(RunDir(out))
    assert cfg.source.backbone == str(src.resolve()) and meta["weights"] == "ema"
    video = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.features(video), averaged.features(video))
        assert not torch.equal(model.features(video), trained.features(video))
    channels = averaged.backbone.out_channels
    assert torch.equal(outputs(model.localizer, channels), outputs(averaged.localizer, channels))


def test_rewire_reads_opentad_backbone_with_ema_weights(opentad, tmp_path):
    src, _, averaged = opentad
    report = rewire(str(src), tmp_path / "rw", arch="swin3d-tiny")
    assert report.source_weights == "state_dict_ema" and report.values_equal
    assert report.source_format == "opentad-mmaction2"
    assert "module.rpn_head.cls_head.weight".removeprefix("module.") in report.dropped_keys
    assert all(k.startswith(("projection.", "neck.", "rpn_head.")) for k in report.dropped_keys)
    written = load_file(tmp_path / "rw/model.safetensors")
    assert all(torch.equal(written[k], v) for k, v in averaged.backbone.state_dict().items())
    config = json.loads((tmp_path / "rw/config.json").read_text())
    assert config["source"]["weights"] == "state_dict_ema" and config["source"]["format"] == "opentad-mmaction2"
