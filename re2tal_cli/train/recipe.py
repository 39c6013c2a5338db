"""Recipes: YAML read into typed configs, strictly.

A recipe is a YAML mapping whose sections are the dataclasses below, one comment per field. Reading it checks every
key and type: an unknown key is an error naming it and the closest valid ones, a wrong type names the key and the
type it needs, and `--set a.b=c` overrides go through the same validation (the value is read as YAML). The resolved
recipe — every field, defaults included — is what a run writes to RUN/config.yaml and what resume and `detect` read
back, so a run never depends on the recipe file it started from.

    recipe = load_recipe("synthetic", sets=["train.epochs=3", "model.actionformer.embed_dim=32"])
    recipe.train.epochs, to_mapping(recipe)

Named recipes are the files of the top-level `recipes/` folder (`re2tal train-tal --recipe synthetic`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from re2tal_cli.errors import BadInputError, BadRecipeError
from re2tal_cli.localizers.config import ActionFormerConfig
from re2tal_cli.localizers.gtad_config import GTADConfig
from re2tal_cli.localizers.vsgn_config import VSGNConfig
from re2tal_cli.reversible.recompute import Outside

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class Mode(enum.StrEnum):
    END_TO_END = "end_to_end"  # backbone and localizer trained together on frames (Re²TAL Fig. 4b)
    FROZEN = "frozen"  # the localizer on the frozen backbone's features, computed on the fly from the same frames
    FEATURES = "features"  # the localizer on features extracted beforehand (`re2tal extract`)


class Sampling(enum.StrEnum):
    WINDOW = "window"  # num_frames consecutive frames (every frame_stride-th) from a random start (THUMOS)
    UNIFORM = "uniform"  # num_frames evenly over the whole video (ActivityNet: the "resize" setting)


class Amp(enum.StrEnum):
    NONE = "none"
    BF16 = "bf16"
    FP16 = "fp16"  # CUDA only, with a gradient scaler


class Optimizer(enum.StrEnum):
    ADAMW = "adamw"
    ADAM = "adam"  # weight decay as an L2 term in the gradient (G-TAD's and BMN's optimizer)
    SGD = "sgd"  # with momentum 0.9


class LrScaling(enum.StrEnum):
    NONE = "none"  # the recipe's learning rates at any global batch
    LINEAR = "linear"  # × global batch / train.reference_batch (Goyal et al.'s rule, SGD)
    SQRT = "sqrt"  # × √(global batch / train.reference_batch) (often used with Adam)


class Fusion(enum.StrEnum):
    SQRT = "sqrt"  # ActionFormer: score = sqrt(class score × proposal score)
    PRODUCT = "product"  # OpenTAD: score = class score × proposal score


class Protocol(enum.StrEnum):
    THUMOS = "thumos"  # tIoU 0.3:0.1:0.7, Ambiguous segments excused
    ANET = "anet"  # tIoU 0.5:0.05:0.95


class LofiMode(enum.StrEnum):
    NONE = "none"  # full fidelity
    S = "s"  # spatial: H/r_s × W/r_s
    T = "t"  # temporal: every r_t-th frame
    ST = "st"  # both, with st_r_s and st_r_t
    CYCLIC_SHORT = "cyclic-short"  # s → t → st, every short_cycle updates
    CYCLIC_LONG = "cyclic-long"  # s → t → st, every long_cycle epochs (LoFi-E2E's default)


class WiringChoice(enum.StrEnum):
    PLAIN = "plain"
    CHECKPOINT = "checkpoint"
    REVERSIBLE = "reversible"


@dataclass
class Source:
    """What the run trains on; set by the command line, recorded so resume and detect rebuild the run."""

    mode: Mode = Mode.END_TO_END
    data: str | None = None  # the dataset directory
    backbone: str | None = None  # the backbone checkpoint (end_to_end, frozen)
    arch: str | None = None  # its architecture
    features: str | None = None  # the features directory (features)


@dataclass
class Augment:
    """Training augmentations of frames (Re²TAL supplementary Table 6), each off at 0; test frames are resized and
    centre-cropped."""

    crop_scale: tuple[float, float] = (1.0, 1.0)  # random crop: area fraction range of the short-side-resized frame
    flip: float = 0.0  # probability of a horizontal flip
    rotation: float = 0.0  # max |degrees| of a random rotation
    brightness: float = 0.0  # colour jitter strengths: factor in [1-b, 1+b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # max |turns|
    temporal_jitter: float = 0.0  # frame indices jittered by up to this fraction of their spacing


@dataclass
class Data:
    """Which videos, and how frames (end_to_end, frozen) or features (features) become localizer inputs."""

    train_subset: str = "train"  # subset of annotations.json trained on
    val_subset: str = "test"  # subset evaluated (THUMOS-14's protocol evaluates on its test videos)
    sampling: Sampling = Sampling.WINDOW
    num_frames: int = 256  # frames per training window (window) or per video (uniform)
    frame_stride: int = 1  # window: take every frame_stride-th frame
    windows_per_video: int = 1  # window: random windows of each training video per epoch
    size: int = 224  # frames are resized (short side) and cropped to size × size
    augment: Augment = field(default_factory=Augment)
    class_agnostic: bool = False  # one "action" class (ActivityNet): labels come from eval.ext_scores
    in_memory: bool = False  # keep decoded videos in memory (small sets trained for many epochs)
    workers: int = 0  # DataLoader worker processes
    trunc_thresh: float = 0.5  # a random training window (frames) or crop (features) is drawn to keep at least this
    # fraction of one action inside it; actions with less inside are dropped from its targets (OpenTAD: 0.75 frames)
    crop_ratio: tuple[float, float] | None = (0.9, 1.0)  # features: crop length as a fraction of the sequence
    resample_to: int | None = None  # features: every video's sequence resampled to this length (ActivityNet: 192)


@dataclass
class Backbone:
    """The video backbone in end_to_end and frozen runs."""

    wiring: WiringChoice | None = None  # None: as the checkpoint is wired (reversible after `re2tal rewire`)
    outside: Outside | None = None  # keep or recompute the layers outside the residual stages; None: as wired
    drop_path: float | None = None  # stochastic depth; None: the architecture's default
    frozen_bn: bool = True  # BatchNorm layers keep their statistics (mmaction's norm_eval)
    lr: float = 1e-5  # learning rate (end_to_end)
    weight_decay: float = 0.05
    feature_length: int | None = None  # features per window resampled to this length (OpenTAD: 512, ANet 192)


@dataclass
class Model:
    """The localizer on the feature sequence."""

    localizer: str = "actionformer"  # which localizer trains; its section below configures it
    actionformer: ActionFormerConfig = field(default_factory=ActionFormerConfig)
    vsgn: VSGNConfig = field(default_factory=VSGNConfig)
    gtad: GTADConfig = field(default_factory=GTADConfig)


@dataclass
class Lofi:
    """Low-fidelity end-to-end training (LoFi-E2E, train/lofi.py): training batches at reduced spatial and/or temporal
    resolution; evaluation at full fidelity. Defaults are the paper's §4.3 settings."""

    mode: LofiMode = LofiMode.NONE
    r_s: float = 2.0  # s: spatial factor
    r_t: int = 4  # t: temporal factor
    st_r_s: float = 1.4142135623730951  # st: spatial factor (√2)
    st_r_t: int = 2  # st: temporal factor
    short_cycle: int = 16  # cyclic-short: optimizer updates per configuration (c_s)
    long_cycle: int = 1  # cyclic-long: epochs per configuration (c_l)


@dataclass
class Train:
    epochs: int = 30  # epochs run
    warmup_epochs: float = 5.0  # linear warm-up, per iteration
    cosine_epochs: float | None = None  # horizon of the cosine decay after warm-up; None: epochs (decays to 0)
    batch_size: int = 2  # videos per step (per process)
    accumulate: int = 1  # steps whose gradients are summed before an optimizer update
    # the global batch (videos per optimizer update, all processes together) the learning rates are set for; None:
    # batch_size × accumulate, one process. A run whose processes × batch_size × accumulate differs says so
    reference_batch: int | None = None
    lr_scaling: LrScaling = LrScaling.NONE  # how the learning rates follow a global batch ≠ reference_batch
    optimizer: Optimizer = Optimizer.ADAMW
    lr: float = 1e-4  # localizer learning rate
    weight_decay: float = 0.05  # on weights of rank ≥ 2 only (not norms, biases, scales)
    clip_grad: float = 1.0  # max global gradient norm; 0: none
    ema_decay: float = 0.0  # EMA of the weights, updated every optimizer step, used for evaluation; 0: off
    amp: Amp = Amp.NONE


@dataclass
class Eval:
    every: int = 1  # evaluate every k epochs (and after the last)
    start_epoch: int = 1  # first epoch evaluated
    protocol: Protocol = Protocol.THUMOS
    ext_scores: str | None = None  # ActivityNet: JSON of video-level class scores fused with 1-class detections
    ext_topk: int = 2  # classes taken from the external scores per video
    fusion: Fusion = Fusion.SQRT


@dataclass
class Recipe:
    """A train-tal run's whole configuration (recipes/)."""

    folder: ClassVar[Path] = RECIPES

    source: Source = field(default_factory=Source)
    seed: int = 0
    data: Data = field(default_factory=Data)
    backbone: Backbone = field(default_factory=Backbone)
    model: Model = field(default_factory=Model)
    lofi: Lofi = field(default_factory=Lofi)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)

    def check(self) -> None:
        """Values that the types allow but the run does not."""
        positive = {
            "data.num_frames": self.data.num_frames,
            "data.frame_stride": self.data.frame_stride,
            "data.windows_per_video": self.data.windows_per_video,
            "data.size": self.data.size,
            "eval.every": self.eval.every,
            "eval.ext_topk": self.eval.ext_topk,
        }
        for key, value in positive.items():
            if value < 1:
                raise BadRecipeError(f"recipe key {key} must be at least 1, got {value}")
        for key, value in {"backbone.feature_length": self.backbone.feature_length,
                           "data.resample_to": self.data.resample_to}.items():  # fmt: skip
            if value is not None and value < 1:
                raise BadRecipeError(f"recipe key {key} must be at least 1, got {value}")
        _check_train(self.train)
        if not self.backbone.lr > 0:
            raise BadRecipeError(f"recipe key backbone.lr must be positive, got {self.backbone.lr}")
        nonneg = {"backbone.weight_decay": self.backbone.weight_decay, "data.workers": self.data.workers}
        for key, value in nonneg.items():
            if value < 0:
                raise BadRecipeError(f"recipe key {key} must be ≥ 0, got {value}")
        _check_drop_path(self.backbone.drop_path)
        if not 0 <= self.data.trunc_thresh <= 1:
            raise BadRecipeError(f"recipe key data.trunc_thresh must be in [0, 1], got {self.data.trunc_thresh}")
        if self.data.crop_ratio is not None and not 0 < self.data.crop_ratio[0] <= self.data.crop_ratio[1] <= 1:
            raise BadRecipeError(f"recipe key data.crop_ratio must be 0 < low ≤ high ≤ 1, got {self.data.crop_ratio}")
        _check_lofi(self.lofi)
        from re2tal_cli.localizers import LOCALIZERS

        if self.model.localizer not in LOCALIZERS:
            raise BadRecipeError(f"recipe key model.localizer: unknown localizer {self.model.localizer!r}; known: "
                                 f"{', '.join(LOCALIZERS)}")  # fmt: skip


def _check_lofi(lofi: Lofi) -> None:
    for key in ("r_s", "st_r_s"):
        if not getattr(lofi, key) >= 1:
            raise BadRecipeError(f"recipe key lofi.{key} must be at least 1, got {getattr(lofi, key)}")
    for key in ("r_t", "st_r_t", "short_cycle", "long_cycle"):
        if getattr(lofi, key) < 1:
            raise BadRecipeError(f"recipe key lofi.{key} must be at least 1, got {getattr(lofi, key)}")


def _check_train(train: Train) -> None:
    """The `train` section's values that its types allow but a run does not."""
    for key, value in {"epochs": train.epochs, "batch_size": train.batch_size, "accumulate": train.accumulate}.items():
        if value < 1:
            raise BadRecipeError(f"recipe key train.{key} must be at least 1, got {value}")
    if not train.lr > 0:
        raise BadRecipeError(f"recipe key train.lr must be positive, got {train.lr}")
    if train.reference_batch is not None and train.reference_batch < 1:
        raise BadRecipeError(f"recipe key train.reference_batch must be at least 1, got {train.reference_batch}")
    for key, value in {"warmup_epochs": train.warmup_epochs, "clip_grad": train.clip_grad,
                       "weight_decay": train.weight_decay}.items():  # fmt: skip
        if value < 0:
            raise BadRecipeError(f"recipe key train.{key} must be ≥ 0, got {value}")
    if not 0 <= train.ema_decay < 1:
        raise BadRecipeError(f"recipe key train.ema_decay must be in [0, 1), got {train.ema_decay}")
    if train.cosine_epochs is not None and train.cosine_epochs < train.epochs:
        raise BadRecipeError(f"recipe key train.cosine_epochs ({train.cosine_epochs}) must be at least train.epochs")


def _check_drop_path(drop_path: float | None) -> None:
    if drop_path is not None and not 0 <= drop_path < 1:
        raise BadRecipeError(f"recipe key backbone.drop_path must be in [0, 1), got {drop_path}")


# --- finetune: clip classification --------------------------------------------------------------------------


class ScheduleKind(enum.StrEnum):
    RE2 = "re2"  # α=0, β=1 throughout, reversible (Re²TAL)
    DR2 = "dr2"  # from α=1, β=start_beta along the diagonal to (0, 1), reversible (Dr²Net)
    NONE = "none"  # the original network (α=1, β=0), ordinary autograd: the baseline


class ScheduleUnit(enum.StrEnum):
    ITERATION = "iteration"  # optimizer updates
    EPOCH = "epoch"


@dataclass
class FinetuneSource:
    """What the run finetunes; set by the command line."""

    checkpoint: str | None = None
    arch: str | None = None
    data: str | None = None  # the clips: a CSV, or a directory (CSV per subset, or class-per-folder)


@dataclass
class Clips:
    train_subset: str = "train"
    val_subset: str = "val"
    num_frames: int | None = None  # frames per clip; None: the backbone's pretraining clip length
    frame_stride: int = 2  # source frames between sampled frames
    size: int | None = None  # square input side; None: the backbone's pretraining size
    augment: Augment = field(default_factory=Augment)
    mixup: float = 0.0  # Beta(a, a) parameter of mixup; 0: off
    cutmix: float = 0.0  # Beta(a, a) parameter of cutmix; 0: off (both on: one of the two per batch, at random)
    workers: int = 0


@dataclass
class Head:
    new: bool = False  # a new classifier even when the checkpoint's has as many classes as the data
    label_smoothing: float = 0.0


@dataclass
class Schedule:
    """The dual-residual coefficients during finetuning (Dr²Net §3.3.2 and supplementary A.4, B)."""

    kind: ScheduleKind = ScheduleKind.RE2
    start_beta: float = 0.1  # dr2: β at the start (α starts at 1)
    update_every: int = 2  # dr2: η, in `unit`s (Dr²Net's action recognition: 2 iterations)
    unit: ScheduleUnit = ScheduleUnit.ITERATION
    end_epoch: float | None = None  # dr2: (0, 1) reached at this epoch; None: a quarter of train.epochs, at least 1
    tolerance: float | None = None  # the guard's tolerance (relative reconstruction error); None: the engine's


@dataclass
class FinetuneBackbone:
    drop_path: float | None = None  # stochastic depth; None: the architecture's default
    frozen_bn: bool = True


@dataclass
class FinetuneEval:
    every: int = 1
    start_epoch: int = 1


@dataclass
class FinetuneRecipe:
    """A finetune run's whole configuration (recipes/finetune/)."""

    folder: ClassVar[Path] = RECIPES / "finetune"

    source: FinetuneSource = field(default_factory=FinetuneSource)
    seed: int = 0
    data: Clips = field(default_factory=Clips)
    backbone: FinetuneBackbone = field(default_factory=FinetuneBackbone)
    head: Head = field(default_factory=Head)
    schedule: Schedule = field(default_factory=Schedule)
    train: Train = field(default_factory=Train)
    eval: FinetuneEval = field(default_factory=FinetuneEval)

    def check(self) -> None:
        _check_train(self.train)
        _check_drop_path(self.backbone.drop_path)
        for key, value in {"data.num_frames": self.data.num_frames, "data.size": self.data.size,
                           "data.frame_stride": self.data.frame_stride, "schedule.update_every":
                           self.schedule.update_every, "eval.every": self.eval.every}.items():  # fmt: skip
            if value is not None and value < 1:
                raise BadRecipeError(f"recipe key {key} must be at least 1, got {value}")
        for key, value in {"data.mixup": self.data.mixup, "data.cutmix": self.data.cutmix,
                           "data.workers": self.data.workers}.items():  # fmt: skip
            if value < 0:
                raise BadRecipeError(f"recipe key {key} must be ≥ 0, got {value}")
        if not 0 <= self.head.label_smoothing < 1:
            raise BadRecipeError(f"recipe key head.label_smoothing must be in [0, 1), got {self.head.label_smoothing}")
        if not 0 < self.schedule.start_beta <= 1:
            raise BadRecipeError(f"recipe key schedule.start_beta must be in (0, 1], got {self.schedule.start_beta}")
        end = self.schedule.end_epoch
        if self.schedule.kind is ScheduleKind.DR2 and end is not None and not 0 < end <= self.train.epochs:
            raise BadRecipeError(f"recipe key schedule.end_epoch must be in (0, train.epochs], got {end}")
        if self.schedule.tolerance is not None and not self.schedule.tolerance > 0:
            raise BadRecipeError(f"recipe key schedule.tolerance must be positive, got {self.schedule.tolerance}")


# --- reading and writing ---------------------------------------------------------------------------------------


def load_recipe(recipe: str | Path, sets: list[str] | tuple[str, ...] = (), kind: type = Recipe):
    """A named recipe (`kind.folder`/NAME.yaml: recipes/ for train-tal, recipes/finetune/ for finetune) or a YAML
    file, with `KEY=VALUE` overrides, validated as a `kind`."""
    return recipe_from_mapping(apply_sets(read_yaml(recipe_path(recipe, kind.folder)), sets), str(recipe), kind)


def recipe_path(recipe: str | Path, folder: Path = RECIPES) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise BadRecipeError(f"{path}: no such recipe file")
        return path
    named = folder / f"{recipe}.yaml"
    if not named.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        close = difflib.get_close_matches(str(recipe), known, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        raise BadRecipeError(f"unknown recipe {str(recipe)!r} (neither a .yaml file nor in {folder}); {hint}")
    return named


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise BadRecipeError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    return data


def apply_sets(data: dict, sets: list[str] | tuple[str, ...]) -> dict:
    """`a.b.c=value` (value read as YAML: 1e-4, true, [1, 2], null) put into a copy of `data`."""
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise BadRecipeError(f"`set` {item!r}: expected KEY=VALUE, e.g. train.epochs=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadRecipeError(f"`set` {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def recipe_from_mapping(data: dict, where: str = "recipe", kind: type = Recipe):
    recipe = _build(kind, data, "")
    try:
        recipe.check()
    except BadRecipeError as error:
        raise BadRecipeError(f"{where}: {error}") from None
    return recipe


def to_mapping(value: Any) -> Any:
    """A config as plain YAML-able data: dataclasses → dicts (every field), enums → their values, tuples → lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_mapping(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_mapping(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def dump_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(to_mapping(recipe), sort_keys=False, allow_unicode=True)


def _build(cls: type, data: Any, prefix: str):
    """An instance of dataclass `cls` from a mapping, every key and type checked."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadRecipeError(f"recipe key {prefix or 'top level'} must be a section (a mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(prefix + c for c in close)}?"
                if close
                else (f"valid keys: {', '.join(prefix + f for f in fields)}")
            )
            raise BadRecipeError(f"unknown recipe key {prefix}{key}; {hint}")
    values = {name: _value(hints[name], data[name], prefix + name) for name in fields if name in data}
    try:
        return cls(**values)
    except BadInputError as error:  # a config's own checks (ActionFormerConfig): say which section
        raise BadRecipeError(f"recipe section {prefix.rstrip('.') or 'top level'}: {error}") from None


def _value(hint: Any, value: Any, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _value(option, value, key)
            except BadRecipeError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise BadRecipeError(
                f"recipe key {key} must be one of {', '.join(m.value for m in hint)}, got {value!r}"
            ) from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise BadRecipeError(f"recipe key {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise BadRecipeError(f"recipe key {key} must be a list of {len(args)}, got {value!r}")
        return tuple(_value(a, v, key) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise BadRecipeError(f"recipe key {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRecipeError(f"recipe key {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 1e-4 as text; anything else that is not a number fails
            try:
                value = float(value)
            except ValueError:
                raise BadRecipeError(f"recipe key {key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise BadRecipeError(f"recipe key {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise BadRecipeError(f"recipe key {key} must be text, got {value!r}")
        return value
    raise TypeError(f"recipe key {key}: unsupported field type {hint!r}")  # a schema bug, not the user's
