"""The training loop every run shares (train-tal, finetune): epochs of accumulated, clipped, scheduled updates with
EMA and AMP; per-step and per-epoch metrics; evaluation every k epochs; a complete checkpoint after every epoch; exact
resume; a stop on a non-finite loss; several processes under torchrun (`train/distributed.py`). What differs
between runs — the model's losses, the evaluation, what a checkpoint must say to rebuild the model — is the
`Task`'s.

    summary = fit(task, RunDir("runs/x"), resume=False, progress=lambda task, done, total, info: None)
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from re2tal_cli.errors import BadInputError, BadRecipeError, NumericalError
from re2tal_cli.text import plural
from re2tal_cli.train.run import Checkpoint, RunDir

# (task, done, total, info): task is "epoch", "step" or "eval"; "note": `info` is a line to show the user
Progress = Callable[[str, int, int | None, str], None]


class Task(Protocol):
    """What `fit` needs from a run. `cfg` has `seed`, `train` (`train.recipe.Train`) and `eval` (`every`,
    `start_epoch`)."""

    cfg: Any
    device: torch.device
    model: torch.nn.Module
    metric: str  # the evaluation record's key that picks the best checkpoint (higher is better)

    def optimizer(self) -> torch.optim.Optimizer: ...

    def loader(self): ...

    def losses(self, batch: Any, autocast: Callable) -> dict[str, torch.Tensor]:
        """The batch's losses: "loss" (what is minimised) and any parts to log, as scalars."""

    def residual_stages(self) -> list:
        """The stages whose reversible guard is reported per epoch (none: an empty list)."""

    def before_update(self, step: int) -> dict[str, Any]:
        """Called before the micro-steps of update `step` (0-based, counted as (epoch − 1) × updates per epoch +
        updates so far in the epoch: a run resumed on another number of processes continues its schedules where
        the epoch is); returns fields for its step record."""

    def after_update(self) -> dict[str, Any]:
        """Called after each update; returns more fields for its step record."""

    def evaluate(self, run: RunDir, ema, epoch: int, step: int, progress: Progress) -> dict[str, Any]:
        """Evaluate (with the EMA weights when given), log and return the "eval" record."""

    def describe(self) -> dict[str, Any]:
        """What a checkpoint's meta.json must hold to rebuild the model without the run's sources."""

    def summary(self, run: RunDir, best: dict | None, seconds: float) -> dict[str, Any]:
        """The run's summary (also written to RUN/summary.json)."""


def run_job(
    out,
    *,
    kind: type,
    new_recipe: Callable[[], Any],
    build: Callable[[Any, torch.device], Task],
    device: str,
    resume: bool,
    force: bool,
    not_on_resume: dict[str, Any],
    progress: Progress | None,
) -> dict[str, Any]:
    """A run from the command line's point of view: the output checked first; a new run's recipe (`new_recipe()`) or
    a resumed run's RUN/config.yaml read as a `kind`; the job built (`build`: every input checked, so nothing is
    written before it returns); the run directory prepared and the resolved recipe written; then `fit`. Under
    torchrun, all of it in the process group (`train/distributed.py`), rank 0 alone writing. `not_on_resume`: the
    options a resumed run refuses, by parameter name (a resumed run keeps its config.yaml)."""
    from re2tal_cli.fileio import check_creatable
    from re2tal_cli.train.recipe import dump_yaml

    run = RunDir(check_creatable(out, directory=True))
    if resume:
        given = [f"`{name}`" for name, value in not_on_resume.items() if value not in (None, False, (), [])]
        if given:
            raise BadInputError(f"a resumed run keeps its config.yaml (recipe and source): give no {', '.join(given)}")
        run.prepare(resume=True, force=False)
        cfg = run.read_recipe(kind)
    else:
        cfg = new_recipe()
    from re2tal_cli.train import distributed

    with distributed.process_group(resolve_device(device, cfg.train.amp.value)) as (process, parsed):
        torch.manual_seed(cfg.seed)  # new parameters' initialisation (a resumed run loads its weights instead)
        job = build(cfg, parsed)
        if not resume and process.is_main:
            run.prepare(resume=False, force=force)
            run.write_config(dump_yaml(cfg))
        distributed.barrier()
        return fit(job, run, resume, progress or _silent)


def _silent(task: str, done: int, total: int | None, info: str) -> None:
    pass


def resolve_device(device: str, amp: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise BadInputError(f"`device` {device!r} is not a device (cpu, cuda, cuda:1, …)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"`device` {device}: CUDA is not available here; use cpu")
    if amp == "fp16" and parsed.type != "cuda":
        raise BadRecipeError("train.amp fp16 needs CUDA; on CPU use bf16")
    return parsed


def fit(task: Task, run: RunDir, resume: bool, progress: Progress) -> dict[str, Any]:
    """Train `task` into `run` (from its last checkpoint with `resume`); the summary. With several processes
    (`train/distributed.py`) every one trains, rank 0 alone logs, evaluates, saves and reports progress, and every
    one returns rank 0's summary."""
    from re2tal_cli.train import distributed
    from re2tal_cli.train.optim import WeightsEMA, lr_factor
    from re2tal_cli.train.run import rng_state, set_rng_state

    process = distributed.current()
    log, progress = (run.log, progress) if process.is_main else (lambda record: None, _silent)
    cfg, model, device = task.cfg, task.model, task.device
    train = cfg.train
    model.to(device)
    losses = distributed.ParallelLosses(model, task.losses)
    optimizer = task.optimizer()
    recipe_lrs = [group["base_lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type, enabled=train.amp.value == "fp16")
    ema = WeightsEMA(model, train.ema_decay) if train.ema_decay > 0 else None
    loader = task.loader()
    updates_per_epoch = math.ceil(len(loader) / train.accumulate)
    warmup = round(train.warmup_epochs * updates_per_epoch)
    horizon = round((train.cosine_epochs or train.epochs) * updates_per_epoch)
    first_epoch, step, best, resumed_from = 1, 0, None, None
    if resume:
        checkpoint = run.load_checkpoint("last")
        model.load_state_dict(checkpoint.model)
        if ema is not None and checkpoint.ema is not None:
            ema.state = checkpoint.ema
        optimizer.load_state_dict(checkpoint.state["optimizer"])
        scaler.load_state_dict(checkpoint.state["scaler"])
        set_rng_state(checkpoint.state["rng"])
        first_epoch, step, best = checkpoint.meta["epoch"] + 1, checkpoint.meta["step"], checkpoint.meta["best"]
        resumed_from = checkpoint.meta.get("world_size", 1)
        if process.is_main:
            run.truncate_metrics(step, checkpoint.meta["epoch"])
    batching = global_batch(train, process.world_size)
    for group, lr in zip(optimizer.param_groups, recipe_lrs, strict=True):  # a resumed optimizer's are overwritten
        group["base_lr"] = lr * batching["lr_factor"]
    if batching["global_batch"] != batching["reference_batch"]:
        log({"kind": "batch", "epoch": first_epoch - 1, "step": step, **batching})
        progress("note", 0, None, _batch_note(batching))
    if resumed_from is not None and resumed_from != process.world_size:
        progress("note", 0, None, f"resumed on {plural(process.world_size, 'process')} from a checkpoint written on "
                                  f"{resumed_from}: epoch {first_epoch} is shared out anew")  # fmt: skip
    writer = _tensorboard(run) if process.is_main else None
    autocast = autocast_for(device, train.amp.value)
    start = time.perf_counter()
    last_eval = None
    for epoch in range(first_epoch, train.epochs + 1):
        progress("epoch", epoch - 1, train.epochs, "")
        loader.sampler.set_epoch(epoch - 1)
        distributed.seed_epoch(cfg.seed, epoch - 1)
        model.train()
        stages = task.residual_stages()
        for stage in stages:
            stage.guard.reset()
        sums: dict[str, float] = {}
        seen, epoch_start = 0, time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        tick = time.perf_counter()
        fields: dict[str, Any] = {}
        for micro, batch in enumerate(loader):
            position = (epoch - 1) * updates_per_epoch + micro // train.accumulate  # where the schedules are
            if micro % train.accumulate == 0:
                fields = task.before_update(position)
            last_micro = (micro + 1) % train.accumulate == 0 or micro + 1 == len(loader)
            with contextlib.nullcontext() if last_micro else losses.no_sync():  # gradients averaged once per update
                values = _micro_step(losses, batch, autocast, scaler, train.accumulate, run, epoch, step)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            seen += 1
            if not last_micro:
                continue
            scale = lr_factor(position, warmup, horizon)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            grad_norm = _update(optimizer, scaler, train.clip_grad, run, epoch, step + 1)
            if ema is not None:
                ema.update(model)
            step += 1
            now = time.perf_counter()
            record = {
                "kind": "step", "epoch": epoch, "step": step, **values, **_learning_rates(optimizer), **fields,
                **task.after_update(),
                "grad_norm": grad_norm, "steps_per_s": 1.0 / max(now - tick, 1e-9),
                "videos_per_s": batching["global_batch"] / max(now - tick, 1e-9),
                "peak_memory_bytes": _peak_memory(device),
            }  # fmt: skip
            tick = now
            log(record)
            _scalars(writer, record, step)
            progress("step", micro // train.accumulate + 1, updates_per_epoch,
                     f"loss {values['loss']:.3f}  lr {record['lr']:.2e}  {record['steps_per_s']:.2f} it/s")  # fmt: skip
        epoch_record = {
            "kind": "epoch", "epoch": epoch, "step": step, **{k: v / max(seen, 1) for k, v in sums.items()},
            "seconds": time.perf_counter() - epoch_start, "guard": _guard_stats(stages),
        }  # fmt: skip
        log(epoch_record)
        if epoch >= cfg.eval.start_epoch and (epoch % cfg.eval.every == 0 or epoch == train.epochs):
            if process.is_main:  # the others wait for it at the barrier
                last_eval = task.evaluate(run, ema, epoch, step, progress)
                _scalars(writer, {task.metric: last_eval[task.metric]}, step)
            distributed.barrier()
        is_best = (
            last_eval is not None
            and last_eval["epoch"] == epoch
            and (best is None or last_eval[task.metric] > best[task.metric])
        )
        if is_best:
            best = {k: v for k, v in last_eval.items() if k not in ("kind", "weights")}
        state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state()}
        if not process.is_main:
            continue
        meta = {"epoch": epoch, "step": step, "best": best, "model": task.describe(),
                "world_size": process.world_size, "global_batch": batching["global_batch"]}  # fmt: skip
        checkpoint = Checkpoint(model.state_dict(), None if ema is None else ema.state, state, meta)
        run.save_checkpoint("last", checkpoint)
        if is_best:
            run.save_checkpoint("best", checkpoint)
    progress("epoch", train.epochs, train.epochs, "")
    if writer is not None:
        writer.close()
    summary = task.summary(run, best, time.perf_counter() - start) if process.is_main else None
    return distributed.from_main(summary)


def global_batch(train, world_size: int) -> dict[str, Any]:
    """The run's global batch (processes × batch_size × accumulate), the recipe's reference (train.reference_batch,
    else batch_size × accumulate) and the factor its lr_scaling rule puts on every learning rate."""
    from re2tal_cli.train.optim import lr_scale

    actual = world_size * train.batch_size * train.accumulate
    reference = train.reference_batch or train.batch_size * train.accumulate
    return {
        "world_size": world_size, "batch_size": train.batch_size, "accumulate": train.accumulate,
        "global_batch": actual, "reference_batch": reference, "lr_scaling": train.lr_scaling.value,
        "lr_factor": lr_scale(train.lr_scaling.value, actual, reference),
    }  # fmt: skip


def _batch_note(batching: dict[str, Any]) -> str:
    b = batching
    rule = b["lr_scaling"]
    effect = "learning rates as the recipe sets them" if rule == "none" else f"learning rates × {b['lr_factor']:.4g}"
    return (f"global batch {b['global_batch']} ({plural(b['world_size'], 'process')} × batch_size {b['batch_size']} × "
            f"accumulate {b['accumulate']}) differs from the recipe's {b['reference_batch']} "
            f"(train.reference_batch); train.lr_scaling {rule}: {effect}")  # fmt: skip


def _learning_rates(optimizer) -> dict[str, float]:
    """ "lr": the first part's learning rate (the head's); "<part>_lr" for each other part (e.g. backbone_lr)."""
    first = optimizer.param_groups[0]["name"]
    rates = {"lr": optimizer.param_groups[0]["lr"]}
    for group in optimizer.param_groups:
        if group["name"] != first:
            rates[f"{group['name']}_lr"] = group["lr"]
    return rates


def _micro_step(losses, batch, autocast, scaler, accumulate: int, run: RunDir, epoch: int, step: int) -> dict:
    """One batch's forward and backward; its losses averaged over the processes (so that every one stops together
    on a non-finite loss)."""
    from re2tal_cli.train.distributed import mean_over_processes

    result = losses(batch, autocast)
    values = mean_over_processes(result)
    if not math.isfinite(values["loss"]):
        raise NumericalError(
            f"epoch {epoch}, step {step + 1}: the loss is {values['loss']}; training stopped, {_last_good(run)}"
        )
    scaler.scale(result["loss"] / accumulate).backward()
    return values


def _update(optimizer, scaler, clip_grad: float, run: RunDir, epoch: int, step: int) -> float:
    """Unscale, clip, step; the gradient norm before clipping. A non-finite norm without a gradient scaler (whose job
    it is to skip such steps in fp16) stops the run."""
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad or math.inf))
    if not math.isfinite(norm) and not scaler.is_enabled():
        raise NumericalError(f"epoch {epoch}, step {step}: the gradient norm is {norm}; training stopped, "
                             f"{_last_good(run)}")  # fmt: skip
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def autocast_for(device: torch.device | str, amp: str) -> Callable:
    """A factory of the autocast context for `amp` (none, bf16, fp16) on `device`."""
    if amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype)


def _peak_memory(device: torch.device) -> int:
    """CUDA: the allocator's peak since the last step (reset here); CPU: the process's peak resident set."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(peak)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _guard_stats(stages) -> dict[str, Any]:
    passes = sum(s.guard.backward_passes for s in stages)
    errors = [s.guard.max_error for s in stages if s.guard.backward_passes]
    worst = math.nan if any(math.isnan(e) for e in errors) else max(errors, default=0.0)
    return {"backward_passes": passes, "fallbacks": sum(s.guard.fallbacks for s in stages), "max_error": worst}


def _last_good(run: RunDir) -> str:
    meta = run.checkpoints / "last" / "meta.json"
    if meta.is_file():
        epoch = json.loads(meta.read_text(encoding="utf-8"))["epoch"]
        return f"the last good checkpoint (epoch {epoch}) is kept in {run.checkpoints / 'last'}"
    return "no epoch had completed (no checkpoint)"


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra re2tal[tensorboard]
        return None
    return SummaryWriter(str(run.root / "tb"))


def _scalars(writer, record: dict[str, Any], step: int) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("epoch", "step"):
            writer.add_scalar(key, value, step)
