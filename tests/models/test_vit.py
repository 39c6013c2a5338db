"""Our video ViT against the reference `transformers` VideoMAE, and the checkpoint layouts it loads."""

import pytest
import torch
from safetensors.torch import load_file

from re2tal_cli.checkpoint import build_from_state_dict, guess_arch
from re2tal_cli.errors import BadCheckpointError, BadInputError
from re2tal_cli.models import create_model, get_arch
from re2tal_cli.reversible import Coupling, Execution

transformers = pytest.importorskip("transformers")

TINY = dict(
    image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=2, intermediate_size=64,
)  # fmt: skip


def hf_model(cls_name, **extra):
    config = transformers.VideoMAEConfig(**TINY, **extra)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a key mix-up cannot hide
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def saved_state_dict(model, tmp_path):
    model.save_pretrained(tmp_path)
    return load_file(tmp_path / "model.safetensors")


@pytest.mark.parametrize("cls_name", ["VideoMAEModel", "VideoMAEForVideoClassification"])
def test_loads_transformers_videomae_and_matches_outputs(cls_name, tmp_path):
    extra = {"num_labels": 5} if cls_name == "VideoMAEForVideoClassification" else {}
    reference = hf_model(cls_name, **extra)
    sd = saved_state_dict(reference, tmp_path)
    ours, converted = build_from_state_dict(get_arch("vit-tiny"), sd, "test")
    ours.eval()
    assert converted.format == "videomae-hf"
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        if cls_name == "VideoMAEModel":
            expected = reference(video.transpose(1, 2)).last_hidden_state
            actual = ours.tokens(video)
        else:
            expected = reference(video.transpose(1, 2)).logits
            actual = ours(video)
        assert (actual - expected).abs().max() < 1e-5
        # rewired at α=1, β=0 it is still the original network
        ours.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)
        again = ours.tokens(video) if cls_name == "VideoMAEModel" else ours(video)
        assert (again - expected).abs().max() < 1e-5


def test_old_q_bias_layout_and_original_release_layout_load_identically(tmp_path):
    saved = saved_state_dict(hf_model("VideoMAEModel"), tmp_path)
    # transformers 5 saves q/v biases as `q_bias`/`v_bias` (the legacy names) and loads `query.bias` too: test both
    sd = {k.replace("q_bias", "query.bias").replace("v_bias", "value.bias"): v for k, v in saved.items()}
    old = {k.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): v for k, v in sd.items()}
    official = {"patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"]}
    official["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
    for i in range(2):
        p = f"encoder.layer.{i}."
        official[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [sd[p + f"attention.attention.{n}.weight"] for n in ("query", "key", "value")]
        )
        official[f"blocks.{i}.attn.q_bias"] = sd[p + "attention.attention.query.bias"]
        official[f"blocks.{i}.attn.v_bias"] = sd[p + "attention.attention.value.bias"]
        for theirs, mine in [
            ("layernorm_before", "norm1"),
            ("attention.output.dense", "attn.proj"),
            ("layernorm_after", "norm2"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
        ]:
            for kind in ("weight", "bias"):
                official[f"blocks.{i}.{mine}.{kind}"] = sd[p + f"{theirs}.{kind}"]
    official["decoder.head.weight"] = torch.zeros(3)  # pretraining decoder: dropped and reported
    models = [build_from_state_dict(get_arch("vit-tiny"), s, "test") for s in (sd, old, official)]
    assert [m[1].format for m in models] == ["videomae-hf", "videomae-hf", "videomae-official"]
    assert models[2][1].dropped == ("decoder.head.weight",)
    reference = models[0][0].state_dict()
    for model, _ in models[1:]:
        for key, value in model.state_dict().items():
            assert torch.equal(value, reference[key]), key


def test_guess_arch_and_wrong_arch_message(tmp_path):
    sd = saved_state_dict(hf_model("VideoMAEModel"), tmp_path)
    assert guess_arch(sd) == ["vit-tiny"]
    with pytest.raises(BadCheckpointError, match=r"missing keys \(first: blocks\.2\..*looks like `arch` vit-tiny"):
        build_from_state_dict(get_arch("vit-tiny-d3"), sd, "test")


def test_feature_maps_shapes_and_longer_inputs():
    model = create_model("vit-tiny").eval()
    video = torch.randn(1, 3, 8, 48, 32)  # more frames and another size than pretraining: positions extend
    with torch.no_grad():
        assert model.feature_maps(video).shape == (1, 32, 4, 3, 2)
        assert model.temporal_features(video).shape == (1, 32, 4)
    with pytest.raises(BadInputError, match="multiple of 2"):
        model.feature_maps(torch.randn(1, 3, 3, 32, 32))


@pytest.mark.parametrize("arch", ["vit-s", "vit-b", "vit-l"])
def test_real_sizes_match_transformers_videomae(arch):
    """Same parameter shapes as transformers' VideoMAEModel of that size (both built on the meta device)."""
    with torch.device("meta"):
        ours = create_model(arch)
        cfg = ours.cfg
        reference = transformers.VideoMAEModel(
            transformers.VideoMAEConfig(
                hidden_size=cfg.dim,
                num_hidden_layers=cfg.depth,
                num_attention_heads=cfg.heads,
                intermediate_size=cfg.mlp_dim,
            )
        )
    converted = get_arch(arch).convert(reference.state_dict()).state_dict
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }


@pytest.mark.parametrize("cls_name", ["VideoMAEModel", "VideoMAEForPreTraining"])
def test_self_supervised_videomae_layouts_load_with_their_final_norm(cls_name, tmp_path):
    """transformers' pretraining-only VideoMAE checkpoints (use_mean_pooling=False: the encoder keeps its final norm
    as `videomae.layernorm`) load without `arch`, from their config.json, and give `last_hidden_state`; so does the
    rewired checkpoint, at α=1, β=0 and through a reload."""
    from re2tal_cli.checkpoint import load_backbone
    from re2tal_cli.rewire import rewire

    reference = hf_model(cls_name, use_mean_pooling=False)
    reference.save_pretrained(tmp_path / "hf")
    encoder = reference if cls_name == "VideoMAEModel" else reference.videomae
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = encoder(video.transpose(1, 2)).last_hidden_state

    loaded = load_backbone(tmp_path / "hf")
    assert (loaded.arch, loaded.arch_from) == ("vit-tiny", "transformers config.json")
    if cls_name == "VideoMAEForPreTraining":
        assert loaded.converted.dropped and all(
            k.startswith(("decoder.", "encoder_to_decoder.", "mask_token")) for k in loaded.converted.dropped
        )
    model = loaded.model.eval()
    with torch.no_grad():
        assert (model.tokens(video) - expected).abs().max() < 1e-5
        model.set_wiring(Coupling(1.0, 0.0), Execution.PLAIN)
        assert (model.tokens(video) - expected).abs().max() < 1e-5

    # the weights alone (no config.json) are recognised by their keys and shapes, the final norm included
    alone = tmp_path / "alone.safetensors"
    (tmp_path / "hf" / "model.safetensors").rename(alone)
    assert load_backbone(alone).arch_from == "checkpoint keys and shapes"

    rewire(str(alone), tmp_path / "rw", alpha=1.0, beta=0.0)
    again = load_backbone(tmp_path / "rw").model.eval()
    with torch.no_grad():
        assert (again.tokens(video) - expected).abs().max() < 1e-5


def test_transformers_config_of_an_unregistered_size_is_refused(tmp_path):
    import json

    from re2tal_cli.checkpoint import load_backbone

    hf_model("VideoMAEModel").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 7}))
    with pytest.raises(BadCheckpointError, match="config.json: describes a VideoMAE .*depth 7"):
        load_backbone(tmp_path)
