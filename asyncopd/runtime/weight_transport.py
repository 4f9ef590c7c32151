"""Collective weight sync: the learner sends a new version to a rollout worker through a
two-rank ``torch.distributed`` group (gloo on CPU, NCCL on CUDA), in buckets.

Why a group per (learner, rollout worker) pair: the controller syncs each worker on its own
schedule (a worker still loading version ``v`` is synced to the newest version later), so one
collective over every worker would make them wait for each other. Each pair's group is built
from its own ``TCPStore`` (the learner hosts it on a free port; its address travels through
Ray, never a fixed port) and does not touch torch's default process group, which stays free
for a data-parallel learner.

Buckets (``BucketLayout``): the state dict's tensors, in state-dict order, are packed into flat
tensors of one dtype and at most ``bucket_bytes`` each (a larger tensor gets a bucket of its
own); a tensor that shares storage with an earlier one (tied embeddings) is sent once and
aliased on arrival. Both ends derive the layout from their own copy of the architecture and
compare a fingerprint of it when the channel opens, so a mismatch fails at once, by name.
A version moves as one broadcast per bucket from rank 0; the receiver unpacks views of its
buckets and loads them like any other state dict, so its parameters are bitwise the
learner's. ``weights_digest`` hashes a state dict (``sync.verify`` compares the two ends
after every sync, whichever the method).
"""

from __future__ import annotations

import datetime
import hashlib
import socket
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Slot:
    name: str
    shape: tuple[int, ...]
    bucket: int
    offset: int  # first element in the bucket
    numel: int


@dataclass(frozen=True)
class BucketLayout:
    """Where every tensor of a state dict travels (see the module docstring)."""

    slots: tuple[Slot, ...]
    bucket_dtypes: tuple[torch.dtype, ...]
    bucket_sizes: tuple[int, ...]  # elements
    aliases: tuple[tuple[str, str], ...]  # (name, the earlier name whose storage it shares)

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor], bucket_bytes: int) -> "BucketLayout":
        if bucket_bytes < 1:
            raise ValueError(f"bucket size must be >= 1 byte, got {bucket_bytes}")
        slots: list[Slot] = []
        dtypes: list[torch.dtype] = []
        sizes: list[int] = []
        aliases: list[tuple[str, str]] = []
        seen: dict[tuple[int, torch.Size, tuple[int, ...], torch.dtype], str] = {}
        open_bucket: dict[torch.dtype, int] = {}  # dtype -> index of its bucket being filled
        for name, t in state.items():
            key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
            if t.numel() > 0 and key in seen:
                aliases.append((name, seen[key]))
                continue
            seen[key] = name
            n, itemsize = t.numel(), t.element_size()
            b = open_bucket.get(t.dtype)
            if b is None or (sizes[b] + n) * itemsize > bucket_bytes and sizes[b] > 0:
                b = len(sizes)
                dtypes.append(t.dtype)
                sizes.append(0)
                open_bucket[t.dtype] = b
            slots.append(Slot(name, tuple(t.shape), b, sizes[b], n))
            sizes[b] += n
        return cls(tuple(slots), tuple(dtypes), tuple(sizes), tuple(aliases))

    @property
    def nbytes(self) -> int:
        return sum(n * torch.empty((), dtype=d).element_size() for n, d in zip(self.bucket_sizes, self.bucket_dtypes))

    def fingerprint(self) -> str:
        """Names, shapes, dtypes and packing: two ends with the same fingerprint agree on every byte's place."""
        text = repr((self.slots, [str(d) for d in self.bucket_dtypes], self.bucket_sizes, self.aliases))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def empty(self, device: str | torch.device) -> list[torch.Tensor]:
        return [torch.empty(n, dtype=d, device=device) for n, d in zip(self.bucket_sizes, self.bucket_dtypes)]

    def pack(self, state: Mapping[str, torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
        """Copies of ``state``'s tensors in flat buckets on ``device``."""
        buckets = self.empty(device)
        with torch.no_grad():
            for s in self.slots:
                buckets[s.bucket][s.offset:s.offset + s.numel].copy_(state[s.name].reshape(-1))
        return buckets

    def unpack(self, buckets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict as views of ``buckets`` (aliases share their tensor)."""
        out = {s.name: buckets[s.bucket][s.offset:s.offset + s.numel].view(s.shape) for s in self.slots}
        for name, same in self.aliases:
            out[name] = out[same]
        return out



def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of every entry of ``state`` (name, dtype, shape, bytes) in name order: two state
    dicts hash alike iff they are bitwise equal, whether or not their tied tensors share storage."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def open_store(host: str, timeout_s: float, world: int = 2) -> tuple[dist.TCPStore, str]:
    """Host a rendezvous store for a group of ``world`` (a sync pair, or the learner's ranks) on a
    free port of ``host``; returns it and its ``host:port``. The store listens on ``host`` only:
    given a port, ``TCPStore`` listens on every interface, so it is handed a socket bound here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = dist.TCPStore(host, port, world, True, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=listener.detach())
    return store, f"{host}:{port}"


def pin_gloo_to(address: str) -> None:
    """Make gloo's connections in this process listen on the interface that holds ``address``
    (the Ray node's address: loopback for a local run) instead of the one the host name resolves
    to, through ``GLOO_SOCKET_IFNAME`` (read whenever a gloo group is made; a value the user set
    is kept). Nothing changes when no interface holds ``address``."""
    import os

    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addrs):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
            return


def connect_store(address: str, timeout_s: float, world: int = 2) -> dist.TCPStore:
    host, port = address.rsplit(":", 1)
    return dist.TCPStore(host, int(port), world, False, timeout=datetime.timedelta(seconds=timeout_s))


class WeightChannel:
    """One end of a pair's group: rank 0 (the learner) sends, rank 1 (a rollout worker) receives.

    ``backend``: ``gloo`` (CPU tensors) or ``nccl`` (CUDA tensors; written against torch's
    ``ProcessGroupNCCL``, not run in this project's CI). Creating either end blocks until the
    other one joins (the driver starts both together)."""

    def __init__(self, store: dist.TCPStore, rank: int, backend: str, timeout_s: float) -> None:
        timeout = datetime.timedelta(seconds=timeout_s)
        if backend == "gloo":
            self.group: Any = dist.ProcessGroupGloo(store, rank, 2, timeout)
        elif backend == "nccl":
            if not dist.is_nccl_available():
                raise RuntimeError("sync.method=collective on CUDA needs NCCL, which this torch build lacks; "
                                   "use sync.method=object_store")
            self.group = dist.ProcessGroupNCCL(store, rank, 2)
        else:
            raise ValueError(f"unknown process-group backend {backend!r} (gloo or nccl)")
        self.store, self.rank = store, rank

    def broadcast(self, buckets: list[torch.Tensor]) -> None:
        """Rank 0's buckets into rank 1's (each end passes its own, of the same layout)."""
        for b in buckets:
            self.group.broadcast(b, 0).wait()
        if buckets and buckets[0].is_cuda:
            torch.cuda.synchronize(buckets[0].device)
