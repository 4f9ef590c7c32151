"""The driver's side of weight sync: what a published version needs, how a sync starts, and
the bitwise check (``sync.verify``). Torch-free, like the driver; the actors' side and the
bucketed broadcast are in ``asyncopd/runtime/weight_transport.py``.

``collective``: the learner serves a version to one worker (``serve_weights``) while the
worker receives it (``receive_weights``); the two calls start together. ``object_store``: the
worker fetches the version's object reference (``load_weights``). Either way the worker's call
answers ``(started, ended, paused seconds, digest)``; the driver keeps the two newest
versions' references and digests (a worker is only ever synced to the newest at the time).
"""

from __future__ import annotations

from typing import Any, Callable

from asyncopd.config.schema import OPDConfig


class WeightSyncs:
    def __init__(self, cfg: OPDConfig) -> None:
        self.cfg = cfg
        self.method = cfg.sync.resolved(cfg.rollout.backend)
        self.holders: dict[int, list[Any]] = {}  # object_store: version -> [object ref]
        self.digests: dict[int, str | None] = {}  # sync.verify: version -> hash of the learner's weights
        self.verified = 0
        self.learner: Any = None
        self.rollout: dict[str, Any] = {}
        self._fingerprint: str | None = None  # collective: the learner's weight layout

    def attach(self, learner: Any, rollout: dict[str, Any]) -> None:
        """Know the actors; ``collective``: open one two-rank group per rollout worker with the
        learner (both ends join at once, each waiting for the other)."""
        import ray

        self.learner, self.rollout = learner, rollout
        if self.method == "collective":
            self._fingerprint = ray.get(learner.weight_layout.remote())
            self._join(list(rollout))

    def rejoin(self, worker: str) -> None:
        """A restarted rollout worker (a fresh process) opens a new channel with the learner
        (``collective``; the object store needs nothing)."""
        if self.method == "collective":
            self._join([worker])

    def _join(self, workers: list[str]) -> None:
        import ray

        sync, learner = self.cfg.sync, self.learner
        backend = "nccl" if self.cfg.cluster.device_type == "cuda" else "gloo"
        addresses = ray.get([learner.open_weight_channel.remote(w, sync.timeout_s) for w in workers])
        ends = [learner.join_weight_channel.remote(w, backend, sync.timeout_s) for w in workers]
        ray.get([self.rollout[w].join_weight_channel.remote(a, backend, sync.timeout_s, sync.bucket_bytes,
                                                            self._fingerprint, sync.verify)
                 for w, a in zip(workers, addresses)])  # (first: a worker that dies meanwhile fails this at once)
        ray.get(ends)

    def published(self, version: int, publication: dict[str, Any]) -> None:
        """The learner made ``version`` available (``LearnerWorker._publish``)."""
        self.holders[version], self.digests[version] = publication["holder"], publication["digest"]
        for old in [v for v in self.holders if v < version - 1]:  # nobody can ask for these any more
            del self.holders[old]
            self.digests.pop(old, None)

    def start(self, worker: str, version: int, pause_mode: str, track: Callable[[Any], None]) -> Any:
        """Start syncing ``worker`` to ``version``; returns the worker's reference. ``track``
        receives the learner's half of a collective sync, so that its failure surfaces."""
        if self.method == "collective":
            track(self.learner.serve_weights.remote(worker, version))
            return self.rollout[worker].receive_weights.remote(version, pause_mode)
        return self.rollout[worker].load_weights.remote(self.holders[version], version, pause_mode, self.cfg.sync.verify)

    def check(self, worker: str, version: int, digest: str | None) -> None:
        """``sync.verify``: the worker's weights after the sync are bitwise the learner's."""
        if not self.cfg.sync.verify:
            return
        if digest is None or digest != self.digests.get(version):
            raise RuntimeError(f"{worker}: weights after the sync to version {version} differ from the learner's "
                               f"(hash {digest} vs {self.digests.get(version)}; sync.method={self.method})")
        self.verified += 1

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records of the syncs."""
        return {"sync_method": self.method, **({"sync_verified": self.verified} if self.cfg.sync.verify else {})}
