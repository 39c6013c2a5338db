"""Video ViT with joint space-time attention (VideoMAE), whose checkpoints load directly.

Each transformer layer contributes two residual blocks, attention then MLP (Dr²Net supplementary Fig. 1), kept as
named submodules `blocks.N.attn` and `blocks.N.mlp`; together they form one residual stage. Checkpoint layouts:
Hugging Face `transformers` VideoMAE (`VideoMAEModel`, `VideoMAEForVideoClassification`, `VideoMAEForPreTraining`,
old `q_bias`/`v_bias` and new `query.bias` forms) and the original VideoMAE release (fused `qkv`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.layers import DropPath, drop_path_rates
from re2tal_cli.models.layouts import Rule, rename_keys
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, list_archs, register_config_reader, register_family
from re2tal_cli.reversible.pieces import TimeLocality, piece_count, worth_splitting
from re2tal_cli.reversible.stage import ResidualStage

__all__ = ["ViTConfig", "VideoViT"]

POSITION_ROWS = 4096  # positions of the sinusoid table computed at a time


@dataclass(frozen=True)
class ViTConfig:
    dim: int = 768  # token width
    depth: int = 12  # transformer layers; each gives two residual blocks (attention, MLP)
    heads: int = 12  # attention heads; dim must be divisible by it
    mlp_dim: int = 3072  # hidden width of the MLP
    patch_size: int = 16  # spatial side of a tubelet, pixels
    tubelet: int = 2  # frames per tubelet
    qv_bias: bool = True  # VideoMAE: query and value projections have biases, key has none
    norm_eps: float = 1e-12  # LayerNorm eps inside the layers (VideoMAE's default)
    mean_pooling: bool = True  # True: pooled = fc_norm(mean of tokens) (VideoMAE); False: tokens get a final `norm`
    num_classes: int = 0  # classifier outputs; 0 = no head
    drop_path: float = 0.0  # stochastic depth at the last layer (linear from 0)
    dropout: float = 0.0  # dropout on each branch output
    attn_dropout: float = 0.0  # dropout on attention probabilities


def _slice(parameter: nn.Parameter, index) -> torch.Tensor:
    return parameter[index]


class AttentionBlock(nn.Module):
    """F = drop_path(dropout(proj(attention(norm(x))))) on tokens (B, N, dim)."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.attn_dropout
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qv_bias)
        self.k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim, bias=cfg.qv_bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).view(b, n, self.heads, d // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # q, k, v: (B, heads, N, dim/heads); SDPA picks a fused kernel that stores no N×N matrix.
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        h = h.transpose(1, 2).reshape(b, n, d)
        return self.drop_path(self.dropout(self.proj(h)))

    def summands(self, x: torch.Tensor) -> int:
        """How many terms a reversible backward recomputes F(x) in, one at a time (`summand`): F is a sum over
        groups of heads (each group's attention through its columns of the projection), and a group's recompute
        holds its share of q, k, v, the attention output and their gradients — at 1024 frames, where the whole
        attention's recompute sets the step's peak, a few token tensors less. As many groups as a time split would
        have pieces (`piece_count`), a divisor of the heads; 1 (whole) on inputs a time split would not split, or
        where attention dropout draws a mask per head (a group would draw other masks than the whole)."""
        if self.training and self.attn_dropout > 0 or not worth_splitting([x]):
            return 1
        groups = min(self.heads, piece_count([x]))
        while self.heads % groups:
            groups -= 1
        return groups

    def summand(self, x: torch.Tensor, index: int, count: int, take=_slice) -> torch.Tensor:
        """Term `index` of `count` of F(x) (see `summands`): heads [index·H/count, (index+1)·H/count), the
        projection's bias in the first. Dropout and drop-path are linear in their input: replayed with the same
        draws, each term's masks are the whole's. Parameters are sliced through `take(parameter, index)` (the
        reversible backward takes the slices' gradients)."""
        b, tokens, d = x.shape
        heads, head_dim = self.heads // count, d // self.heads
        cols = slice(index * heads * head_dim, (index + 1) * heads * head_dim)
        projections = (self.q, self.k, self.v)
        # q, k and v through one matrix product: its backward makes one gradient of the normed input, not three
        weight = torch.cat([take(p.weight, cols) for p in projections])
        biases = [None if p.bias is None else take(p.bias, cols) for p in projections]
        width = heads * head_dim
        bias = None if all(t is None for t in biases) else torch.cat([weight.new_zeros(width) if t is None else t
                                                                        for t in biases])  # fmt: skip
        qkv = F.linear(self.norm(x), weight, bias).view(b, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(b, tokens, heads * head_dim)
        out = F.linear(h, take(self.proj.weight, (slice(None), cols)), self.proj.bias if index == 0 else None)
        return self.drop_path(self.dropout(out))


class MlpBlock(nn.Module):
    """F = drop_path(dropout(fc2(gelu(fc1(norm(x))))))."""

    time_locality = TimeLocality.same(1)  # each token alone: the reversible backward may recompute it in pieces

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.dropout(self.fc2(F.gelu(self.fc1(self.norm(x))))))


class Layer(nn.Module):
    """One transformer layer: its two residual branches as named submodules (not called as a unit)."""

    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.attn = AttentionBlock(cfg, drop_path)
        self.mlp = MlpBlock(cfg, drop_path)


class VideoViT(VideoBackbone):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.out_channels = cfg.dim
        self.temporal_stride = cfg.tubelet
        self.min_frames = cfg.tubelet
        self.min_size = cfg.patch_size
        self.patch_embed = nn.Conv3d(
            3,
            cfg.dim,
            kernel_size=(cfg.tubelet, cfg.patch_size, cfg.patch_size),
            stride=(cfg.tubelet, *(cfg.patch_size,) * 2),
        )
        self.blocks = nn.ModuleList(Layer(cfg, p) for p in drop_path_rates(cfg.drop_path, cfg.depth))
        self.stage = ResidualStage([branch for layer in self.blocks for branch in (layer.attn, layer.mlp)])
        self.norm = None if cfg.mean_pooling else nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # fc_norm uses LayerNorm's default eps, as VideoMAEForVideoClassification does.
        self.fc_norm = nn.LayerNorm(cfg.dim) if cfg.mean_pooling and cfg.num_classes else None
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None
        self._position_cache: dict[tuple, torch.Tensor] = {}

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, N, dim), N = T/tubelet · H/patch · W/patch, tokens in (t, h, w) order."""
        self.check_input(video)
        x = self.stage(self.run_outside(self._embed, video, modules=[self.patch_embed]))
        return x if self.norm is None else self.norm(x)

    def _embed(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video).flatten(2).transpose(1, 2)  # (B, N, dim)
        return x + self._positions(x.shape[1], x.device, x.dtype)

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = video.shape
        p, tub = self.cfg.patch_size, self.cfg.tubelet
        x = self.tokens(video)
        return x.transpose(1, 2).reshape(b, self.cfg.dim, t // tub, h // p, w // p)  # (B, C, T', H', W')

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head, else the pooled (B, dim) feature."""
        x = self.tokens(video)
        pooled = x.mean(1) if self.cfg.mean_pooling else x[:, 0]
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return pooled if self.head is None else self.head(pooled)

    def _positions(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """VideoMAE's fixed 1-D sinusoid table over the flattened token index, made for any token count: computed in
        float64 and rounded to float32 as VideoMAE's, a block of POSITION_ROWS positions at a time (at 1024×224²,
        four float64 tables of all 100k tokens were 2.3 GiB, the forward's peak)."""
        key = (n, device, dtype)
        if key not in self._position_cache:
            d = self.cfg.dim
            rate = torch.pow(10000.0, 2 * (torch.arange(d) // 2).to(torch.float64) / d)
            even = torch.arange(d) % 2 == 0
            table = torch.empty(n, d, dtype=torch.float32)
            for start in range(0, n, POSITION_ROWS):
                angle = torch.arange(start, min(n, start + POSITION_ROWS), dtype=torch.float64)[:, None] / rate
                table[start : start + len(angle)] = torch.where(even, torch.sin(angle), torch.cos(angle))
            self._position_cache = {key: table.to(device=device, dtype=dtype)}
        return self._position_cache[key]


# --- checkpoint layouts -----------------------------------------------------------------------------------------

_LAYER = r"(?:videomae\.)?encoder\.layer\.(\d+)"
HF_RULES: list[Rule] = [  # transformers' VideoMAEModel / …ForVideoClassification / …ForPreTraining
    (_LAYER + r"\.layernorm_before\.(\w+)", r"blocks.\1.attn.norm.\2"),
    (_LAYER + r"\.attention\.attention\.(query|key|value)\.(\w+)", lambda m: f"blocks.{m[1]}.attn.{m[2][0]}.{m[3]}"),
    (_LAYER + r"\.attention\.attention\.([qv])_bias", r"blocks.\1.attn.\2.bias"),  # transformers < 5
    (_LAYER + r"\.attention\.output\.dense\.(\w+)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"\.layernorm_after\.(\w+)", r"blocks.\1.mlp.norm.\2"),
    (_LAYER + r"\.intermediate\.dense\.(\w+)", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"\.output\.dense\.(\w+)", r"blocks.\1.mlp.fc2.\2"),
    (r"(?:videomae\.)?embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.\1"),
    (r"(?:videomae\.)?layernorm\.(\w+)", r"norm.\1"),
    (r"(?:videomae\.)?fc_norm\.(\w+)", r"fc_norm.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
]
OFFICIAL_RULES: list[Rule] = [  # the VideoMAE release (after the fused qkv is split)
    (r"(?:encoder\.)?blocks\.(\d+)\.norm1\.(\w+)", r"blocks.\1.attn.norm.\2"),
    (r"(?:encoder\.)?blocks\.(\d+)\.attn\.([qv])_bias", r"blocks.\1.attn.\2.bias"),
    (r"(?:encoder\.)?blocks\.(\d+)\.norm2\.(\w+)", r"blocks.\1.mlp.norm.\2"),
    (r"(?:encoder\.)?blocks\.(\d+)\.(attn\.[qkv]|attn\.proj|mlp\.fc1|mlp\.fc2)\.(\w+)", r"blocks.\1.\2.\3"),
    (r"(?:encoder\.)?patch_embed\.proj\.(\w+)", r"patch_embed.\1"),
    (r"(?:encoder\.)?(norm|fc_norm|head)\.(\w+)", r"\1.\2"),
]
_PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_pos_embed")


def convert_videomae(sd: Mapping[str, torch.Tensor], arch: Arch | None = None) -> ConvertedCheckpoint:
    """Map a VideoMAE checkpoint (Hugging Face or original release) or our own layout to our keys; values untouched
    except the original release's fused qkv, which is split into q, k, v rows."""
    if any(re.fullmatch(r"blocks\.\d+\.attn\.k\.weight", k) for k in sd):  # ours: k separate, no other layout has it
        return _with_build(dict(sd), "re2tal")
    dropped = tuple(k for k in sd if k.startswith(_PRETRAINING_ONLY))
    kept = {k: v for k, v in sd.items() if k not in dropped}
    if any(k.startswith(("encoder.layer.", "videomae.", "embeddings.")) for k in kept):
        return _with_build(rename_keys(kept, HF_RULES), "videomae-hf", dropped)
    if any(k.startswith(("blocks.", "encoder.blocks.")) for k in kept):
        return _with_build(rename_keys(_split_qkv(kept), OFFICIAL_RULES), "videomae-official", dropped)
    return ConvertedCheckpoint(dict(sd), "unknown")  # the strict key check names what does not fit


def _split_qkv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's fused `attn.qkv.weight` (3·dim rows) → q, k, v weights (its biases are q_bias, v_bias)."""
    out = {}
    for key, value in sd.items():
        if key.endswith(".attn.qkv.weight"):
            for name, rows in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[key.replace(".qkv.", f".{name}.")] = rows
        else:
            out[key] = value
    return out


def _with_build(sd: dict[str, torch.Tensor], fmt: str, dropped: tuple[str, ...] = ()) -> ConvertedCheckpoint:
    """A final `norm` over the tokens is what a VideoMAE without mean pooling has (transformers' `layernorm` when
    `use_mean_pooling=False`, every pretraining-only checkpoint): build the model with it, and without mean pooling."""
    build = {"mean_pooling": False} if "norm.weight" in sd else {}
    return ConvertedCheckpoint(sd, fmt, dropped, build)


def from_transformers_config(config: dict, path) -> tuple[str, dict]:
    """The arch of a transformers VideoMAE config.json (its sizes) and what else it implies (mean pooling, q/v
    biases, the norms' eps)."""
    sizes = {
        "dim": config.get("hidden_size", 768),
        "depth": config.get("num_hidden_layers", 12),
        "heads": config.get("num_attention_heads", 12),
        "mlp_dim": config.get("intermediate_size", 3072),
        "patch_size": config.get("patch_size", 16),
        "tubelet": config.get("tubelet_size", 2),
    }
    for arch in list_archs():
        if arch.family == "vit" and all(getattr(arch.config, k) == v for k, v in sizes.items()):
            implied = {
                "mean_pooling": bool(config.get("use_mean_pooling", True)),
                "qv_bias": bool(config.get("qkv_bias", True)),
                "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
            }
            return arch.name, implied
    described = ", ".join(f"{k} {v}" for k, v in sizes.items())
    raise BadCheckpointError(f"{path}: describes a VideoMAE ({described}) that no registered vit architecture has")


# --- architectures ----------------------------------------------------------------------------------------------

_register = register_family("vit", VideoViT, convert_videomae)
register_config_reader("videomae", from_transformers_config)

_VIDEOMAE_INPUT = InputSpec(num_frames=16, image_size=224, frame_stride=4)
_register("vit-s", ViTConfig(dim=384, depth=12, heads=6, mlp_dim=1536), _VIDEOMAE_INPUT, "VideoMAE ViT-S/16, 16×224²")
_register("vit-b", ViTConfig(dim=768, depth=12, heads=12, mlp_dim=3072), _VIDEOMAE_INPUT, "VideoMAE ViT-B/16, 16×224²")
_register("vit-l", ViTConfig(dim=1024, depth=24, heads=16, mlp_dim=4096), _VIDEOMAE_INPUT, "VideoMAE ViT-L/16, 16×224²")
_register("vit-h", ViTConfig(dim=1280, depth=32, heads=16, mlp_dim=5120), _VIDEOMAE_INPUT, "VideoMAE ViT-H/16, 16×224²")
_TINY_INPUT = InputSpec(num_frames=4, image_size=32)
_TINY = ViTConfig(dim=32, depth=2, heads=2, mlp_dim=64, patch_size=16, tubelet=2)
_register("vit-tiny", _TINY, _TINY_INPUT, "test model: 2 layers, dim 32", test_only=True)
_register("vit-tiny-d3", replace(_TINY, depth=3), _TINY_INPUT, "test model: 3 layers (odd depth)", test_only=True)
