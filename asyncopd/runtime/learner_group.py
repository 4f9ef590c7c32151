"""The driver's handle on the learner: its ranks' actors, used as one learner (torch-free).

Rank 0 (``lead``) is the learner the rest of the driver talks to (weight sync, its answers).
``train`` splits a batch across the ranks by tokens (``shards.py``) and passes each rank the
whole batch's token count, so that the ranks' averaged gradient is the whole batch's
(``asyncopd/backends/torch_backend/data_parallel.py``); ``call`` runs a method every rank takes
part in (evaluation, checkpoints: FSDP gathers the full state) and answers rank 0's reference.
The other ranks' references are kept and collected on the next call: a rank that failed
surfaces there (and blocks rank 0 at its next collective until ``sync.timeout_s``).
"""

from __future__ import annotations

from typing import Any

from asyncopd.runtime.shards import split_by_tokens


class LearnerGroup:
    def __init__(self, ranks: list[Any]) -> None:
        if not ranks:
            raise ValueError("a learner needs at least one rank")
        self.ranks = ranks
        self.lead = ranks[0]
        self._followers: list[Any] = []

    @property
    def world(self) -> int:
        return len(self.ranks)

    def form(self, backend: str, timeout_s: float) -> None:
        """Form the ranks' process group (``gloo``/``nccl``); nothing to do for one rank."""
        import ray

        if self.world == 1:
            return
        address = ray.get(self.lead.open_group.remote(timeout_s))
        ray.get([r.join_group.remote(address, backend, timeout_s) for r in self.ranks])

    def train(self, step: int, batch: list[Any]) -> Any:
        """Start update ``step`` on every rank; returns rank 0's reference (its metrics are the batch's)."""
        self._collect()
        if self.world == 1:
            return self.lead.train.remote(step, batch)
        tokens = [len(it.response_ids) for it in batch]
        shards = split_by_tokens(tokens, self.world)
        refs = [r.train.remote(step, [batch[i] for i in shard], sum(tokens)) for r, shard in zip(self.ranks, shards)]
        self._followers.extend(refs[1:])
        return refs[0]

    def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on every rank; returns rank 0's reference."""
        self._collect()
        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        self._followers.extend(refs[1:])
        return refs[0]

    def _collect(self) -> None:
        """Raise the error of a finished follower call, if any; keep the unfinished ones."""
        import ray

        if not self._followers:
            return
        done, self._followers = ray.wait(self._followers, num_returns=len(self._followers), timeout=0)
        ray.get(done)
