"""The training step that `memprofile` estimates and measures: one function for both, so they cannot drift apart.

    build: arch with a wiring (+ the localizer head `config.head`, memory/head_loss.py) → optimizer
    step:  zero_grad(set_to_none) → input (B, 3, T, S, S) on the device → [autocast] backbone.temporal_features →
           head → loss → backward → optimizer.step

The estimate runs it on fake tensors (no memory, no compute); the measurement runs it for real. Both tell an
`Observer` where the step is (phase: input / forward / backward / optimizer; scope: backbone / head), which is how
the estimate splits memory by component and how the CUDA measurement takes a peak per phase.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from re2tal_cli.errors import BadInputError
from re2tal_cli.memory.head_loss import HeadName, create_head
from re2tal_cli.models import VideoBackbone, get_arch
from re2tal_cli.reversible.recompute import Outside
from re2tal_cli.reversible.wiring import Wiring, WiringName

WIRINGS = tuple(WiringName)


class Amp(enum.StrEnum):
    NONE = "none"
    BF16 = "bf16"
    FP16 = "fp16"


class OptimizerName(enum.StrEnum):
    ADAMW = "adamw"  # two fp32 moments per parameter
    SGD = "sgd"  # with momentum: one buffer per parameter


@dataclass(frozen=True)
class StepConfig:
    """One training configuration: what a user decides before a run."""

    arch: str
    frames: int  # T of the input clip
    size: int  # S: the clip is S×S pixels
    batch: int = 1
    wiring: WiringName = WiringName.REVERSIBLE
    amp: Amp = Amp.NONE
    optimizer: OptimizerName = OptimizerName.ADAMW
    drop_path: float = 0.1  # stochastic depth of the backbone, as in finetuning recipes (it changes what is kept)
    device: str = "cuda"  # where the step runs; the estimate models this device's allocator and optimizer kernels
    head: HeadName | None = None  # the localizer trained on the backbone's features (None: the backbone alone)
    outside: Outside | None = None  # checkpoint and reversible wirings: the layers outside the stages (None: recompute)

    def __post_init__(self):
        for name in ("frames", "size", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise BadInputError(f"`{name}` must be a positive integer, got {value}")
        if not 0.0 <= self.drop_path < 1.0:
            raise BadInputError(f"`drop_path` must be in [0, 1), got {self.drop_path}")
        object.__setattr__(self, "wiring", _enum(WiringName, self.wiring, "wiring"))
        object.__setattr__(self, "amp", _enum(Amp, self.amp, "amp"))
        object.__setattr__(self, "optimizer", _enum(OptimizerName, self.optimizer, "optimizer"))
        if self.head is not None:
            object.__setattr__(self, "head", _enum(HeadName, self.head, "head"))
        if self.outside is not None:
            object.__setattr__(self, "outside", _enum(Outside, self.outside, "outside"))
        if self.device not in ("cpu", "cuda"):
            raise BadInputError(f"`device` must be cpu or cuda, got {self.device!r}")
        if self.amp is Amp.FP16 and self.device == "cpu":
            raise BadInputError("`amp` fp16 needs CUDA; on CPU use bf16")
        get_arch(self.arch)  # raises UnknownNameError with suggestions

    @property
    def backbone_wiring(self) -> Wiring:
        """The wiring the backbone runs with: `wiring`'s, with `outside` for a wiring other than plain."""
        wiring = self.wiring.wiring
        if self.outside is None or self.wiring is WiringName.PLAIN:
            return wiring
        return replace(wiring, outside=self.outside)

    def to_json(self) -> dict:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> StepConfig:
        return cls(**data)


def _enum(kind: type[enum.StrEnum], value, param: str):
    try:
        return kind(value)
    except ValueError:
        raise BadInputError(f"`{param}` must be one of {', '.join(k.value for k in kind)}, got {value!r}") from None


class Observer:
    """Told where a training step is. The default does nothing."""

    def phase(self, name: str) -> None:
        """`input`, `forward`, `backward`, `optimizer`, then `idle` once the step is done."""

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """`backbone` or `head`: whose forward is running."""
        yield


@dataclass
class TrainingSetup:
    config: StepConfig
    backbone: VideoBackbone
    head: nn.Module | None
    optimizer: torch.optim.Optimizer

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone} | ({"head": self.head} if self.head is not None else {})


def build_model(config: StepConfig) -> tuple[VideoBackbone, nn.Module | None]:
    """The backbone (wired as `config.wiring`) and the head of `config.head`, in training mode, on the current
    default device."""
    backbone = get_arch(config.arch).create(num_classes=0, drop_path=config.drop_path)
    config.backbone_wiring.apply(backbone)
    head = create_head(config.head, backbone.out_channels).train() if config.head is not None else None
    return backbone.train(), head


def make_optimizer(config: StepConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Built with the kernels the target device would use: on CUDA the multi-tensor (`foreach`) step, whose
    temporaries span all parameters at once; on CPU the per-parameter loop. Stating it lets the fake-tensor estimate
    (which runs on CPU) choose the CUDA kernels."""
    foreach = config.device == "cuda"
    if config.optimizer is OptimizerName.ADAMW:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=foreach)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, foreach=foreach)


def setup(config: StepConfig, backbone: VideoBackbone, head: nn.Module | None) -> TrainingSetup:
    params = [p for m in (backbone, head) if m is not None for p in m.parameters() if p.requires_grad]
    return TrainingSetup(config, backbone, head, make_optimizer(config, params))


def check_input_shape(config: StepConfig, backbone: VideoBackbone) -> None:
    problem = backbone.input_problem(config.frames, config.size, config.size)
    if problem is not None:
        raise BadInputError(f"{config.arch} cannot take a {config.frames}×{config.size}² clip: {problem}")


def autocast(config: StepConfig, device_type: str) -> contextlib.AbstractContextManager:
    if config.amp is Amp.NONE:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.amp is Amp.BF16 else torch.float16
    return torch.autocast(device_type, dtype=dtype)


def loss_of(output: torch.Tensor) -> torch.Tensor:
    """A head returning a scalar gives the loss itself; otherwise a stand-in loss that depends on every output."""
    return output if output.ndim == 0 else output.float().square().mean()


def train_step(
    s: TrainingSetup,
    device: torch.device | str,
    observer: Observer | None = None,
    make_input: Callable[[], torch.Tensor] | None = None,
) -> None:
    """One training step. `device` is where tensors live (a fake CPU device for the estimate)."""
    obs = observer or Observer()
    c = s.config
    device = torch.device(device)
    obs.phase("zero_grad")
    s.optimizer.zero_grad(set_to_none=True)
    obs.phase("input")
    video = make_input() if make_input else torch.randn(c.batch, 3, c.frames, c.size, c.size, device=device)
    obs.phase("forward")
    with autocast(c, device.type):
        with obs.scope("backbone"):
            features = s.backbone.temporal_features(video)  # (B, C, T')
        with obs.scope("head"):
            output = s.head(features) if s.head is not None else features
            loss = loss_of(output)
    del features, output
    obs.phase("backward")
    loss.backward()
    del loss
    obs.phase("optimizer")
    s.optimizer.step()
    obs.phase("idle")
    del video
