"""Several processes (gloo, 2 CPU processes spawned with torchrun's environment) against one.

One spawn runs everything the tests below check, to pay the processes' start-up once:

- finetune, 2 processes × batch 1 from scratch, against 1 process × batch 2 (the same global batch): the same
  losses, learning rates and gradient norms at every step and the same final weights (TOLERANCE);
- the same 1-process run stopped after epoch 1 and resumed on 2 processes × batch 1: the same end;
- a reversible backbone with drop-path and a frozen part under DDP without `find_unused_parameters` or
  `static_graph`: its gradients equal the average of each process's gradients computed alone;
- `extract` sharded over 2 processes: the files and index.json of one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from re2tal_cli.reversible.stage import RE2TAL, Execution
from tests.train.conftest import records

# float32 sums over 2 processes vs 1 reassociate: measured, the losses were equal, the gradient norms 1.3e-7 apart
# (relative) and the weights at most 1.3e-6 apart (absolute) after 4 AdamW updates; ~10× that
TOLERANCE = dict(rtol=1e-4, atol=1e-5)

RECIPE = """
seed: 0
data: {num_frames: 8, frame_stride: 2, size: 32}
backbone: {drop_path: 0.0}
head: {new: true, label_smoothing: 0.1}
schedule: {kind: re2}
train: {epochs: 2, warmup_epochs: 1, cosine_epochs: 2, batch_size: 2, reference_batch: 2, lr: 1.0e-3}
"""
WORLD_SIZE = 2


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports for the jobs' process groups, each free now, all below the kernel's ephemeral range. A
    port the kernel hands out for port 0 comes from that range, where an earlier job's own connections could take it
    before its job listens on it (EADDRINUSE; it happened in CI)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports: list[int] = []
    candidates = range(ephemeral_low // 2, ephemeral_low)
    for port in random.sample(candidates, len(candidates)):
        with contextlib.closing(socket.socket()) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports below {ephemeral_low}")


def _worker(rank: int, jobs: list[tuple[str, int, dict]]) -> None:
    """One spawned process: torchrun's environment, then each job in its own process group (its own port)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1")
    torch.set_num_threads(1)
    for name, port, kwargs in jobs:
        os.environ["MASTER_PORT"] = str(port)
        JOBS[name](rank=rank, **kwargs)


def _finetune(rank: int, **kwargs) -> None:
    from re2tal_cli.finetune import finetune

    summary = finetune(**kwargs)
    Path(kwargs["out"], f"summary-rank{rank}.json").write_text(json.dumps(summary))


def _extract(rank: int, checkpoint, data, out) -> None:
    from re2tal_cli.extract import ExtractSettings, extract_features

    extract_features(checkpoint, data, out, ExtractSettings(mode="frames", size=32))


def reversible_backbone() -> torch.nn.Module:
    """r3d-tiny wired reversible (Re²TAL's α=0, β=1), drop-path 0.3, its stem and a block of a reversible
    stage of two frozen."""
    from re2tal_cli.models import create_model

    torch.manual_seed(0)
    model = create_model("r3d-tiny", num_classes=3, drop_path=0.3)
    model.set_wiring(RE2TAL, Execution.REVERSIBLE)
    model.residual_stages()[1].blocks[0].requires_grad_(False)  # the stage's other block trains
    model.stem.requires_grad_(False)
    return model.train()


def reversible_inputs(step: int, rank: int) -> tuple[torch.Tensor, int]:
    """Step `step`'s clip for process `rank`, and the seed of its drop-path draws."""
    generator = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(1, 3, 8, 32, 32, generator=generator), 1000 * step + rank


def _reversible(rank: int, out) -> None:
    from re2tal_cli.train.distributed import process_group

    with process_group(torch.device("cpu")):
        grads = _reversible_steps(rank)  # (the DDP wrapper is freed inside the group, as the training loop's is)
    torch.save(grads, Path(out) / f"grads-rank{rank}.pt")


def _reversible_steps(rank: int) -> list[dict[str, torch.Tensor]]:
    from re2tal_cli.train.distributed import ParallelLosses

    model = reversible_backbone()
    losses = ParallelLosses(model, lambda clip, autocast: {"loss": model(clip).square().mean()})
    grads = []
    for step in range(2):  # DDP finds a parameter it waited for in vain at the start of the next step
        clip, seed = reversible_inputs(step, rank)
        torch.manual_seed(seed)
        losses(clip, contextlib.nullcontext)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    return grads


JOBS = {"finetune": _finetune, "extract": _extract, "reversible": _reversible}


def _edit_config(run: Path, **train) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"].update(train)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synth, plain_backbone):
    """The single-process references and everything the 2 spawned processes produced."""
    from re2tal_cli.extract import ExtractSettings, extract_features
    from re2tal_cli.finetune import finetune

    root = tmp_path_factory.mktemp("distributed")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    common = dict(checkpoint=str(plain_backbone), data=str(synth / "clips"), recipe=str(recipe))
    finetune(**common, out=root / "one")
    finetune(**common, out=root / "one-epoch-1", epochs=1)
    resumed = root / "resumed"
    shutil.copytree(root / "one-epoch-1", resumed)
    _edit_config(resumed, epochs=2, batch_size=1)  # 2 processes × 1 = the global batch of 2
    extract_features(plain_backbone, synth, root / "feats-one", ExtractSettings(mode="frames", size=32))

    jobs = [
        ("finetune", dict(**common, out=str(root / "two"), sets=["train.batch_size=1"])),
        ("finetune", dict(checkpoint=None, data=None, out=str(resumed), resume=True)),
        ("reversible", dict(out=str(root))),
        ("extract", dict(checkpoint=str(plain_backbone), data=str(synth), out=str(root / "feats-two"))),
    ]
    jobs = [(name, port, kwargs) for (name, kwargs), port in zip(jobs, _free_ports(len(jobs)), strict=True)]
    torch.multiprocessing.spawn(_worker, args=(jobs,), nprocs=WORLD_SIZE, join=True)
    return root


def _steps(run: Path) -> list[dict]:
    return [{k: r[k] for k in ("epoch", "step", "loss", "lr", "grad_norm")} for r in records(run, "step")]


def _assert_same_weights(a: Path, b: Path) -> float:
    """The largest relative difference between two runs' last weights (asserted within TOLERANCE)."""
    wa, wb = (load_file(run / "checkpoints" / "last" / "model.safetensors") for run in (a, b))
    assert wa.keys() == wb.keys()
    worst = 0.0
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], **TOLERANCE, msg=key)
        if wa[key].is_floating_point():
            worst = max(worst, float(((wb[key] - wa[key]).abs() / (wa[key].abs() + 1e-12)).max()))
    return worst


def test_two_processes_at_batch_1_train_as_one_at_batch_2(runs):
    one, two = _steps(runs / "one"), _steps(runs / "two")
    assert len(one) == len(two) == 2 * 2  # 4 training clips: 2 updates per epoch either way
    for a, b in zip(one, two, strict=True):
        assert (b["epoch"], b["step"]) == (a["epoch"], a["step"])
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
        assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE["rtol"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=TOLERANCE["rtol"])
    assert one[-1]["loss"] != one[0]["loss"]  # it trained
    _assert_same_weights(runs / "one", runs / "two")
    # rank 0 alone wrote: each step logged once, one evaluation per epoch; every process returned its summary
    assert [r["epoch"] for r in records(runs / "two", "eval")] == [1, 2]
    summaries = [json.loads((runs / "two" / f"summary-rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert summaries[0] == summaries[1] == json.loads((runs / "two" / "summary.json").read_text())
    meta = json.loads((runs / "two" / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["world_size"], meta["global_batch"]) == (2, 2)
    assert not records(runs / "two", "batch")  # the recipe's reference batch: nothing to say


def test_a_run_resumed_on_two_processes_ends_as_one_never_interrupted(runs):
    one, resumed = _steps(runs / "one"), _steps(runs / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(one, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE["rtol"])
    _assert_same_weights(runs / "one", runs / "resumed")
    meta = json.loads((runs / "resumed" / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["epoch"], meta["world_size"]) == (2, 2)


def test_reversible_stages_with_drop_path_and_a_frozen_part_need_no_ddp_options(runs):
    """Under DDP with default options (else the second step raises), each process's gradients are the average of
    what each process's clip and drop-path draws give alone."""
    model = reversible_backbone()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and any(n.startswith("stem.") for n in frozen) and len(frozen) > len(list(model.stem.parameters()))
    for step in range(2):
        alone = []
        for rank in range(WORLD_SIZE):
            clip, seed = reversible_inputs(step, rank)
            torch.manual_seed(seed)
            model(clip).square().mean().backward()
            alone.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad(set_to_none=True)
        assert not frozen & alone[0].keys()
        for rank in range(WORLD_SIZE):
            ddp = torch.load(runs / f"grads-rank{rank}.pt", weights_only=True)[step]
            assert ddp.keys() == alone[0].keys()
            for name in ddp:
                torch.testing.assert_close(ddp[name], (alone[0][name] + alone[1][name]) / 2, rtol=1e-5, atol=1e-7)
        assert any(not torch.equal(alone[0][n], alone[1][n]) for n in alone[0])  # the processes did differ


def test_extract_sharded_over_processes_writes_what_one_process_does(runs):
    one, two = runs / "feats-one", runs / "feats-two"
    files = sorted(p.name for p in one.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in two.glob("*.safetensors"))
    for name in files:
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((two / "index.json").read_text()) == json.loads((one / "index.json").read_text())


def test_each_process_takes_every_world_size_th_sample_of_the_epochs_order():
    from re2tal_cli.data.datasets import EpochSampler

    whole = EpochSampler(7, shuffle=True, seed=3)
    shards = [EpochSampler(7, shuffle=True, seed=3, shard=(rank, 3)) for rank in range(3)]
    for sampler in (whole, *shards):
        sampler.set_epoch(5)
    order = [key for _, key in whole]
    padded = order + order[:2]  # 7 → 9: the order repeated from its start
    assert [[key for _, key in shard] for shard in shards] == [padded[r::3] for r in range(3)]
    assert all(len(shard) == 3 for shard in shards) and all(epoch == 5 for shard in shards for epoch, _ in shard)


def test_a_global_batch_other_than_the_recipes_is_logged_and_scales_the_learning_rates(runs, synth, plain_backbone):
    from re2tal_cli.finetune import finetune

    recipe = runs / "scaled.yaml"
    recipe.write_text(RECIPE.replace("reference_batch: 2", "reference_batch: 1, lr_scaling: linear"))
    notes = []
    finetune(plain_backbone, synth / "clips", runs / "scaled", recipe=recipe, epochs=1,
             progress=lambda task, done, total, info: notes.append(info) if task == "note" else None)  # fmt: skip
    (batch,) = records(runs / "scaled", "batch")
    assert batch == {"kind": "batch", "epoch": 0, "step": 0, "world_size": 1, "batch_size": 2, "accumulate": 1,
                     "global_batch": 2, "reference_batch": 1, "lr_scaling": "linear", "lr_factor": 2.0}  # fmt: skip
    assert len(notes) == 1 and "global batch 2" in notes[0] and "× 2" in notes[0]
    scaled, reference = records(runs / "scaled", "step"), records(runs / "one", "step")[:2]
    assert [r["lr"] for r in scaled] == pytest.approx([2 * r["lr"] for r in reference], rel=1e-12)


@pytest.mark.parametrize(("key", "value", "message"), [("reference_batch", 0, "at least 1"),
                                                       ("lr_scaling", "cubic", "none, linear, sqrt")])  # fmt: skip
def test_the_batch_keys_are_checked(key, value, message):
    from re2tal_cli.errors import BadRecipeError
    from re2tal_cli.train.recipe import FinetuneRecipe, load_recipe

    with pytest.raises(BadRecipeError, match=f"train.{key}.*{message}"):
        load_recipe("synthetic", [f"train.{key}={value}"], kind=FinetuneRecipe)
