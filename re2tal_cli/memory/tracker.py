"""Storage accounting for one training step: every tensor storage an operator creates, by category, with the peak.

A `TorchDispatchMode` sees each operator's outputs; a new storage is counted (rounded to the allocator's block)
under the category the step is in (activations of the backbone during its forward, temporaries during backward, …)
and uncounted when its last reference dies (a weak reference's callback). Categories move when a tensor's role
becomes known: a backward temporary becomes a gradient when autograd accumulates it into `.grad`, an optimizer
temporary becomes optimizer state when the step keeps it. This is PyTorch's `MemTracker` idea reduced to what
memprofile reports (phase peaks and components), without its module hooks, which a reversible Function's backward
(a graph rebuilt inside `backward`) confuses.

Under `FakeTensorMode` nothing is allocated: shapes flow, storages are fake and still die when unreferenced, so the
same accounting estimates a step far bigger than the machine.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from re2tal_cli.memory.step import Observer

# Categories, in report order.
PARAMETERS = "parameters"
BUFFERS = "buffers"
GRADIENTS = "gradients"
OPTIMIZER_STATE = "optimizer state"
INPUT = "input"
ACTIVATIONS = "activations"
BACKWARD_TEMPORARIES = "backward temporaries"
OPTIMIZER_TEMPORARIES = "optimizer temporaries"
PERSISTENT = "persistent caches"  # allocated in a forward but kept across steps (e.g. a position table)
WORKSPACE = "kernel workspace"  # scratch a kernel allocates inside itself (modelled, see `cpu_kernel_workspace`)


def round_up(nbytes: int, block: int) -> int:
    return -(-nbytes // block) * block if block > 1 else nbytes


@dataclass
class Snapshot:
    """Live bytes at one moment, by (category, owner); owner is backbone / head / '' and, for activations, the
    residual stage (`backbone/stage0`) they were made in."""

    total: int = 0
    parts: dict[tuple[str, str], int] = field(default_factory=dict)

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (category, _), n in self.parts.items():
            out[category] += n
        return dict(out)

    def get(self, category: str, owner_prefix: str = "") -> int:
        return sum(n for (c, o), n in self.parts.items() if c == category and o.startswith(owner_prefix))


@dataclass
class _Record:
    nbytes: int
    category: str
    owner: str
    storage_id: int


class StorageTracker(TorchDispatchMode, Observer):
    """Counts live storages by category; an `Observer` of the training step, so it knows phase and scope.

    `block`: allocation granularity (512 models the CUDA caching allocator; 1 counts exact bytes, as the CPU
    allocator reports them).
    """

    def __init__(self, block: int = 512, workspace=None):
        super().__init__()
        self.block = block
        self.workspace = workspace  # (func, args, out) → transient bytes inside that kernel, or None
        self._records: dict[int, _Record] = {}  # key: id of a weak reference to the storage
        self._refs: dict[int, weakref.ref] = {}
        self._key_of: dict[int, int] = {}  # id of the storage's Python object → key
        self._live: dict[tuple[str, str], int] = defaultdict(int)
        self.total = 0
        self.operators = 0  # dispatched so far: what a fake run's time is proportional to
        self._phase = "idle"
        self._scopes: list[str] = []
        self.peak = Snapshot()
        self.phase_peaks: dict[str, Snapshot] = {}
        self.at_phase_start: dict[str, Snapshot] = {}

    # --- what the step tells us ---------------------------------------------------------------------------------

    def phase(self, name: str) -> None:
        self._phase = name
        snap = self.snapshot()
        self.at_phase_start[name] = snap
        self.phase_peaks[name] = snap

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def reset_peaks(self) -> None:
        self.peak = self.snapshot()
        self.phase_peaks = {}
        self.at_phase_start = {}

    def copy(self) -> StorageTracker:
        """A tracker that starts from this one's live storages (their categories and owners) with fresh peaks: one
        starting point for several steps."""
        other = StorageTracker(self.block, self.workspace)
        for key, record in self._records.items():
            storage = self._refs[key]()
            if storage is not None:
                other._add(storage, record.category, record.owner)
        other.reset_peaks()
        return other

    def snapshot(self) -> Snapshot:
        return Snapshot(self.total, {k: v for k, v in self._live.items() if v})

    # --- registering tensors whose role is known ----------------------------------------------------------------

    def track(self, tensor: torch.Tensor, category: str, owner: str = "") -> None:
        """Count `tensor`'s storage under `category` (moving it there if it is already counted)."""
        storage = tensor.untyped_storage()
        key = self._key(storage)
        if key is None:
            self._add(storage, category, owner)
        else:
            self._move(key, category, owner)

    def retag(self, from_category: str, to_category: str) -> None:
        """Every live storage of one category moves to another (e.g. what a forward left behind → persistent)."""
        for key, record in self._records.items():
            if record.category == from_category:
                self._move(key, to_category, "")

    # --- the dispatch hook --------------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.operators += 1
        if func is torch.ops.prim.device.default:  # C++ asking a fake tensor its device (most calls): no storage
            return func(*args)
        if func is torch.ops.aten._local_scalar_dense.default and _is_fake(args[0]):
            # `.item()` on a fake tensor has no value. Its reader here is the optimizer's step count (divided by:
            # must not be 0); the reversible backward skips its numerical check on fake tensors.
            return False if args[0].dtype is torch.bool else (1e-12 if args[0].is_floating_point() else 1)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if self._key(storage) is None:
                    self._add(storage, *self._category_now())
        if self.workspace is not None and (extra := self.workspace(func, args, out)):
            self._transient(round_up(extra, self.block))
        return out

    def _category_now(self) -> tuple[str, str]:
        owner = "/".join(self._scopes)
        if self._phase == "forward":
            return ACTIVATIONS, owner
        if self._phase == "backward":
            return BACKWARD_TEMPORARIES, ""
        if self._phase == "optimizer":
            return OPTIMIZER_TEMPORARIES, ""
        if self._phase == "input":
            return INPUT, ""
        return PERSISTENT, owner

    # --- bookkeeping --------------------------------------------------------------------------------------------

    def _key(self, storage: torch.UntypedStorage) -> int | None:
        # The storage's Python object is preserved while its C++ storage lives, so its id names it until it dies.
        key = self._key_of.get(id(storage))
        wref = self._refs.get(key) if key is not None else None
        return key if wref is not None and wref() is storage else None

    def _add(self, storage: torch.UntypedStorage, category: str, owner: str) -> None:
        nbytes = round_up(storage.nbytes(), self.block)
        wref = weakref.ref(storage, self._on_free)
        key = id(wref)
        self._refs[key] = wref
        self._key_of[id(storage)] = key
        self._records[key] = _Record(nbytes, category, owner, id(storage))
        self._live[(category, owner)] += nbytes
        self.total += nbytes
        if self.total > self.peak.total:
            self.peak = self.snapshot()
        peak = self.phase_peaks.get(self._phase)
        if peak is not None and self.total > peak.total:
            self.phase_peaks[self._phase] = self.snapshot()

    def _transient(self, nbytes: int) -> None:
        """Scratch live only inside one kernel, beside its outputs: it can set a peak, it is never left live."""
        for snaps, key in ((self, "peak"), (self.phase_peaks, self._phase)):
            current = snaps.peak if snaps is self else snaps.get(key)
            if current is not None and self.total + nbytes > current.total:
                snap = self.snapshot()
                snap.total += nbytes
                snap.parts[(WORKSPACE, "")] = nbytes
                if snaps is self:
                    self.peak = snap
                else:
                    snaps[key] = snap

    def _move(self, key: int, category: str, owner: str) -> None:
        record = self._records[key]
        self._live[(record.category, record.owner)] -= record.nbytes
        record.category, record.owner = category, owner
        self._live[(category, owner)] += record.nbytes

    def _on_free(self, wref: weakref.ref) -> None:
        key = id(wref)
        record = self._records.pop(key, None)
        self._refs.pop(key, None)
        if record is not None:
            if self._key_of.get(record.storage_id) == key:
                del self._key_of[record.storage_id]
            self._live[(record.category, record.owner)] -= record.nbytes
            self.total -= record.nbytes


def cpu_kernel_workspace(func, args, out) -> int:
    """Scratch of the CPU kernels that allocate a sizeable one. A BatchNorm backward that takes the input's gradient
    allocates one more input-sized buffer beside it (torch 2.13, training and eval mode alike; it set the peak of a
    checkpointed TSM-R50 step once the blocks ran ReLU(h + branch)). A convolution's backward, by the backend torch
    picks for it (measured on torch 2.13: within 1 % at video sizes, up to 10 % above on small inputs, and 16–20 %
    above for a stem on the 3-channel clip):
    - oneDNN reorders the input, the output gradient and the weight into blocked layouts — or, where the input's
      gradient is taken, the input and that gradient (written blocked, then reordered), whichever is more;
    - the im2col kernels (small channel counts) unfold the input into one buffer of columns: channels × kernel
      volume rows, a row per output position.
    The CUDA counterpart (cuDNN's workspace) depends on the algorithm chosen at run time and is not modelled."""
    if func is torch.ops.aten.native_batch_norm_backward.default:
        inp, output_mask = args[1], args[-1]
        return inp.numel() * inp.element_size() if output_mask[0] else 0
    if func is not torch.ops.aten.convolution_backward.default:
        return 0
    grad_out, inp, weight, _, stride, padding, dilation, transposed, output_padding, groups, output_mask = args
    backend = torch._C._select_conv_backend(
        inp, weight, None, stride, padding, dilation, transposed, output_padding, groups, None
    )
    if backend in _IM2COL_BACKENDS:
        return weight[0].numel() * (grad_out.numel() // grad_out.shape[1]) * grad_out.element_size()
    reorders = sum(x.numel() * x.element_size() for x in (grad_out, inp, weight))
    return max(reorders, 2 * inp.numel() * inp.element_size()) if output_mask[0] else reorders


_IM2COL_BACKENDS = {
    torch._C._ConvBackend.Slow2d,
    torch._C._ConvBackend.Slow3d,
    torch._C._ConvBackend.SlowDilated2d,
    torch._C._ConvBackend.SlowDilated3d,
}


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)
