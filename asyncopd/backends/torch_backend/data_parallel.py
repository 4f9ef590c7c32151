"""Data-parallel training of the student over ``N`` ranks of a ``torch.distributed`` group.

Each rank holds the model (``ddp``: a full replica in ``DistributedDataParallel``; ``fsdp``:
parameters, gradients and optimizer state sharded by FSDP2 ``fully_shard``) and trains on its
shard ``B_r`` of the batch ``B`` (``asyncopd/runtime/shards.py`` balances them by tokens).

Why one update equals the single-device update: with ``T`` the response tokens of the whole
batch and ``l_t`` the per-token loss, the single-device loss is ``L = sum_{t in B} l_t / T =
sum_r L_r`` with ``L_r = sum_{t in B_r} l_t / T``, so ``grad L = sum_r grad L_r``. DDP and FSDP
*average* gradients over the ranks, so rank ``r`` back-propagates ``N * L_r`` and the average is
``grad L`` exactly (up to float summation order). Gradient clipping then sees the global norm
(identical on every DDP rank; FSDP's sharded ``clip_grad_norm_`` reduces it across the mesh),
and every rank takes the same AdamW step. Micro-batches accumulate without communicating
(``no_sync`` / ``set_requires_gradient_sync(False)``); the last one reduces. A rank whose shard
is empty still runs one forward/backward of weight zero, because the reduction is collective.

State that leaves the group (weights for a sync or a checkpoint, the optimizer state) is
*full*, keyed by parameter name (``torch.distributed.checkpoint.state_dict``), so a checkpoint
written with ``N`` ranks and either strategy resumes with any other ``N``.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
)

STRATEGIES = ("ddp", "fsdp")


def join_default_group(store: Any, rank: int, world: int, backend: str, timeout_s: float) -> None:
    """Make this process rank ``rank`` of the default group (``gloo`` on CPU, ``nccl`` on CUDA)."""
    if backend == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("a data-parallel learner on CUDA needs NCCL, which this torch build lacks")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


class DataParallel:
    """One rank's view of the group: how to wrap the model, accumulate, reduce and gather."""

    def __init__(self, strategy: str, device: torch.device) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"learner.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if not dist.is_initialized():
            raise RuntimeError("DataParallel needs the default process group (join_default_group first)")
        self.strategy, self.device = strategy, device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    # ------------------------------------------------------------------ the model
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward/backward through (DDP: a wrapper around ``model``, whose
        replicas start from rank 0's weights; FSDP: ``model`` itself, sharded in place, each
        decoder layer its own unit so that only one layer is gathered at a time)."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    @property
    def loss_scale(self) -> float:
        """Both strategies average gradients over the ranks: scale each rank's loss by ``N``."""
        return float(self.world)

    @contextlib.contextmanager
    def accumulating(self, wrapped: torch.nn.Module, last: bool) -> Iterator[None]:
        """Backward passes inside reduce gradients across ranks only when ``last``."""
        if last:
            yield
        elif self.strategy == "ddp":
            with wrapped.no_sync():  # type: ignore[operator]
                yield
        else:
            wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]

    # ------------------------------------------------------------------ metrics
    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def union(self, keys: list[str]) -> list[str]:
        """The sorted union of every rank's ``keys`` (a rank without samples has no diagnostics,
        and the sums the ranks add must line up)."""
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, sorted(keys))
        return sorted({k for ks in gathered for k in ks})

    def max(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ------------------------------------------------------------------ full state (every rank calls these)
    def full_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full ``state_dict`` of the unwrapped ``model`` on CPU (FSDP: gathered; every rank
        must call it, rank 0 gets the tensors, the others ``{}``)."""
        if self.strategy == "ddp":
            return {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()} if self.rank == 0 else {}
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def full_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state keyed by parameter name, gathered to rank 0 (the others get ``{}``)."""
        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                      cpu_offload=True))

    def load_full(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                  optim: dict[str, Any]) -> None:
        """Load full state that rank 0 read (the other ranks pass ``{}``): broadcast and sharded as needed."""
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, weights, options=opts)
        set_optimizer_state_dict(model, optimizer, optim, options=opts)


def named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """One process's optimizer state keyed by parameter name (the format ``DataParallel`` writes)."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def load_named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a name-keyed optimizer state (or, from checkpoints before data parallelism, an index-keyed one)."""
    if any(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (the ``ModuleList`` with most parameters)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    return list(max(lists, key=lambda ml: sum(p.numel() for p in ml.parameters())))
