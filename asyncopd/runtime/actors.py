"""Ray actors wrapping the torch backend: rollout workers and teacher workers (the learner: ``learner_actor.py``).

Each actor pins itself to the devices its layout gives it (CPU cores through
``os.sched_setaffinity`` on ``cluster.device_type: cpu``; ``cuda:<i>`` otherwise) and
reports wall-clock ``time.time()`` stamps; the driver turns them into run-relative times.

The rollout actor is threaded (``max_concurrency``): ``generate`` runs a batched decode loop
while ``load_weights`` and ``abort`` arrive on other threads. They hand their request to the
decode loop through ``_hook``, which the engine calls between decode steps, so a weight
update lands exactly on a step boundary, as the pause modes require.

Continuous batching (``rollout.batching: continuous``): ``submit`` queues requests and starts
the worker's serving thread (``TorchRolloutEngine.serve``) once; the engine takes queued
requests into its running batch as slots free. ``exchange`` submits, then answers with what
has ended since its last answer once ``min_join`` have (what frees enough slots for the next
join) or the worker holds nothing else: one call per ``min_join`` samples, not one per sample.
The thread is idle, and loads weights at once, while it has nothing in flight.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from asyncopd.backends.base import GenRequest, GenResult, ScoreRequest, TeacherPayload, WeightUpdate
from asyncopd.backends.factory import build_rollout_engine, build_teacher_scorer
from asyncopd.runtime.calls import FreshProcessError
from asyncopd.config.actor_placement import visible_device


def place(device_type: str, devices: list[int]) -> str:
    """Pin this process to its devices (indices on its node: ``config/actor_placement.py``) and
    its gloo groups to the node's address; return the torch device string. On CUDA that is the actor's GPU among those Ray made visible
    to it (``visible_device``), not the layout's cluster-wide index."""
    import ray
    import torch

    from asyncopd.runtime.weight_transport import pin_gloo_to  # (lazy: torch)

    if ray.is_initialized():  # (gloo groups listen on the node's address only)
        pin_gloo_to(ray.util.get_node_ip_address())
    if device_type == "cpu":
        if hasattr(os, "sched_setaffinity"):
            available = os.sched_getaffinity(0)
            cores = {d for d in devices if d in available} or available
            os.sched_setaffinity(0, cores)
            _pin_other_threads(cores)
        torch.set_num_threads(max(1, len(devices)))
        return "cpu"
    index = visible_device(ray_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), devices[0])
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def ray_gpu_ids() -> list[str]:
    """The GPUs Ray gave this process; none outside a Ray worker (the micro-benchmarks pin the
    driver's own process with ``place``, where the layout's local index applies)."""
    import ray

    return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []


def cpu_seconds(device: str, cpu0: float) -> float | None:
    """CPU time this thread spent since ``cpu0`` (``time.thread_time``): the work of a call, without
    the time it waited for a core shared with other roles or for Ray (wall time counts both).
    Actors run torch with one intra-op thread per core they own, so on a single-core worker this
    is all of its compute. ``None`` on a GPU, where the CPU time is not the device's busy time."""
    return None if device.startswith("cuda") else time.thread_time() - cpu0


def freeze_heap() -> None:
    """Move what a worker process holds once it is built (its models, torch, transformers, Ray:
    millions of objects) out of the cyclic garbage collector's reach (``gc.freeze``), after one
    collection. Else the collector's first full pass scans them all in the middle of the run:
    measured on the default run, one ``score`` call at ~5% of every run took ~200 ms of CPU
    instead of ~3 ms, and one rollout answer ~100 ms, while samples piled up behind them (the
    staleness spike the simulator cannot reproduce). Reference counting still frees them."""
    gc.collect()
    gc.freeze()


def where_am_i() -> dict[str, Any]:
    """What ``ready`` reports: process, node, cores, and the GPUs Ray gave this actor."""
    import ray

    ctx = ray.get_runtime_context()
    return {"pid": os.getpid(), "node": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
            "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "gpus": ray_gpu_ids(), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gc_frozen": gc.get_freeze_count()}  # (objects ``freeze_heap`` put out of the collector's reach)


def _pin_other_threads(cores: set[int]) -> None:
    """``sched_setaffinity(0)`` pins only the calling thread; the threads Ray started before
    (RPC, (de)serialisation) would keep running on every core. Pin them too, so a role uses
    exactly its cores, as the simulator assumes (threads started later inherit the mask)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread is pinned, which is the compute thread
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # the thread ended meanwhile
            pass


class _Adopted:
    """A worker process answers work calls only once the driver took it on with ``ready``
    (``calls.FreshProcessError``): at start, and after each restart."""

    _adopted = False

    def ready(self) -> dict[str, Any]:
        self._adopted = True
        freeze_heap()
        return {**where_am_i(), "device": self.device}  # type: ignore[attr-defined]

    def _check_adopted(self) -> None:
        if not self._adopted:
            raise FreshProcessError(f"{self.name} (pid {os.getpid()}) restarted; ready() not called yet")  # type: ignore[attr-defined]


@dataclass
class _Receiver:
    """A rollout worker's end of its collective channel: the layout, the group, the buffers it receives into."""

    layout: Any  # weight_transport.BucketLayout
    channel: Any  # weight_transport.WeightChannel
    buckets: list[Any]
    verify: bool


class RolloutWorker(_Adopted):
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], dtype: str,
                 backend: str = "torch", **engine_options: Any) -> None:
        self.name = name
        self.device = place(device_type, devices)
        self.engine = build_rollout_engine(backend, model_path, device=self.device, dtype=dtype, **engine_options)
        self._receiver: _Receiver | None = None  # once a collective channel is joined
        self._lock = threading.Condition()
        self._generating = False
        self._pending: WeightUpdate | None = None
        self._evict: set[int] = set()
        self._queue: list[GenRequest] = []  # continuous batching: submitted, not yet admitted
        self._ended: list[GenResult] = []  # ended, not yet answered
        self._ended_cpu = 0.0  # the serving thread's CPU seconds not yet handed out as ``cpu_s``
        self._server: threading.Thread | None = None
        self._server_error: BaseException | None = None

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self._check_adopted()
        with self._lock:
            self._generating = True
        cpu0 = time.thread_time()
        try:
            results = self.engine.generate(requests, step_hook=self._hook)
            cpu = cpu_seconds(self.device, cpu0)  # (the wave's work; its wall time minus this is waiting)
            for r in results:
                r.wave_cpu_s = cpu
            return results
        finally:
            with self._lock:
                self._generating = False
                self._evict.clear()
                if self._pending is not None:  # arrived after the last decode step
                    self.engine.set_weights(self._pending)
                    self._pending = None
                self._lock.notify_all()

    # ------------------------------------------------------------- continuous batching
    def submit(self, requests: list[GenRequest], slots: int, min_join: int) -> None:
        """Queue ``requests`` for the serving thread (started on first use)."""
        self._check_adopted()
        self._enqueue(requests, slots, min_join)

    def _enqueue(self, requests: list[GenRequest], slots: int, min_join: int) -> None:
        with self._lock:
            self._queue.extend(requests)
            if self._server is None:
                self._server = threading.Thread(target=self._serve, args=(slots, min_join), daemon=True,
                                                name=f"{self.name}-serve")
                self._server.start()
            self._lock.notify_all()

    def exchange(self, requests: list[GenRequest], slots: int, min_join: int) -> list[GenResult]:
        """Queue ``requests`` (``submit``), then return what ended since the last answer, once at
        least ``min_join`` have, or once the worker holds nothing else. On CPU devices each
        finished result carries ``cpu_s``, an equal share of the serving thread's CPU seconds
        since the last answer that had a finished result (aborted ones carry none)."""
        self._check_adopted()
        if requests:
            self._enqueue(requests, slots, min_join)
        with self._lock:
            self._lock.wait_for(lambda: len(self._ended) >= min_join or self._server_error is not None
                                or (self._ended and not self._generating and not self._queue))
            if self._server_error is not None and not self._ended:
                raise RuntimeError(f"{self.name}: its serving thread failed: {self._server_error!r}")
            out, self._ended = self._ended, []
            finished = [r for r in out if r.status == "finished"]
            if finished and not self.device.startswith("cuda"):  # (as ``cpu_seconds``)
                share, self._ended_cpu = self._ended_cpu / len(finished), 0.0
                for r in finished:
                    r.cpu_s = share
        return out

    def take(self, most: int, wait: bool) -> list[GenRequest] | None:
        """The engine's ``RequestSource`` (``backends/base.py``); never closed."""
        with self._lock:
            if wait:  # (the batch is empty: a weight update that came after its last step applies now)
                self._idle()
                self._lock.wait_for(lambda: bool(self._queue))
            if not self._queue:
                return []
            out, self._queue = self._queue[:most], self._queue[most:]
            self._generating = True
            return out

    def _idle(self) -> None:
        """Nothing in flight (lock held): weights load at once from now on; apply one that arrived
        after the last decode step."""
        self._generating = False
        self._evict.clear()
        if self._pending is not None:
            self.engine.set_weights(self._pending)
            self._pending = None
        self._lock.notify_all()

    def _serve(self, slots: int, min_join: int) -> None:
        mark = [time.thread_time()]

        def ended(results: list[GenResult]) -> None:
            now = time.thread_time()
            with self._lock:
                self._ended.extend(results)
                self._ended_cpu += now - mark[0]
                self._lock.notify_all()
            mark[0] = now

        try:
            self.engine.serve(self, ended, self._hook, slots=slots, min_join=min_join)
        except BaseException as e:  # (reported by the next exchange)
            with self._lock:
                self._server_error = e
                self._lock.notify_all()

    def _hook(self) -> tuple[WeightUpdate | None, set[int]]:
        with self._lock:
            update, self._pending = self._pending, None
            evict, self._evict = self._evict, set()
            if update is not None:
                self._lock.notify_all()
            return update, evict

    def load_weights(self, holder: list[Any], version: int, pause_mode: str,
                     verify: bool = False) -> tuple[float, float, float | None, str | None]:
        """Fetch ``version`` from the object store and apply it at the next step boundary.
        Returns (started, ended, paused seconds, digest): generation keeps going while the
        weights are fetched and only stops to load them; paused is None when the backend does
        not time its loads; digest (with ``verify``) hashes the weights it then samples with."""
        import ray

        self._check_adopted()
        started = time.time()
        self._apply(WeightUpdate(version, ray.get(holder[0]), pause_mode))  # type: ignore[arg-type]
        return started, time.time(), self._pause_of(version), self._digest() if verify else None

    def join_weight_channel(self, address: str, backend: str, timeout_s: float, bucket_bytes: int,
                            fingerprint: str, verify: bool) -> None:
        """Be rank 1 of this worker's group with the learner (``runtime/weight_transport.py``)."""
        from asyncopd.runtime.weight_transport import BucketLayout, WeightChannel, connect_store  # (lazy: torch)

        layout = BucketLayout.of(self.engine.state_dict(), bucket_bytes)
        if layout.fingerprint() != fingerprint:
            raise RuntimeError(f"{self.name}: its model's weight layout differs from the learner's "
                               f"({layout.fingerprint()} vs {fingerprint}): not the same architecture")
        channel = WeightChannel(connect_store(address, timeout_s), 1, backend, timeout_s)
        self._receiver = _Receiver(layout, channel, layout.empty(self.device), verify)

    def receive_weights(self, version: int, pause_mode: str) -> tuple[float, float, float | None, str | None]:
        """Receive ``version`` from the learner's broadcast (generation goes on meanwhile), apply
        it at the next step boundary; returns what ``load_weights`` does."""
        self._check_adopted()
        r = self._receiver
        if r is None:
            raise RuntimeError(f"{self.name}: receive_weights before join_weight_channel")
        started = time.time()
        r.channel.broadcast(r.buckets)
        self._apply(WeightUpdate(version, r.layout.unpack(r.buckets), pause_mode))  # type: ignore[arg-type]
        return started, time.time(), self._pause_of(version), self._digest() if r.verify else None

    def _apply(self, update: WeightUpdate) -> None:
        """Load ``update`` now if idle, else hand it to the decode loop and wait until it is loaded."""
        with self._lock:
            if not self._generating:
                self.engine.set_weights(update)
            else:
                self._pending = update
                self._lock.wait_for(lambda: self._pending is not update)

    def _digest(self) -> str:
        from asyncopd.runtime.weight_transport import weights_digest  # (lazy: torch)

        return weights_digest(self.engine.state_dict())

    def _pause_of(self, version: int) -> float | None:
        loads = getattr(self.engine, "load_seconds", None)
        if loads is None:
            return None
        deadline = time.time() + 2.0  # handed to the decode thread, which may still be loading it
        while version not in loads and time.time() < deadline:
            time.sleep(2e-4)
        return loads.pop(version, None)

    def abort(self, sample_ids: list[int]) -> None:
        """Evict ``sample_ids``: at the next step boundary if decoding, at once if still queued."""
        with self._lock:
            ids = set(sample_ids)
            queued = [r for r in self._queue if r.sample_id in ids]
            if queued:
                now = time.time()
                self._queue = [r for r in self._queue if r.sample_id not in ids]
                self._ended.extend(GenResult(r.sample_id, r.prompt_id, list(r.prompt_ids), [], [], [], now, now,
                                             status="aborted", abort_reason="evict", finish_reason="aborted")
                                   for r in queued)
                self._lock.notify_all()
            self._evict.update(ids - {r.sample_id for r in queued})


class TeacherWorker(_Adopted):
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], dtype: str,
                 backend: str = "torch", **scorer_options: Any) -> None:
        self.name = name
        self.device = device = place(device_type, devices)
        self.scorer = build_teacher_scorer(backend, model_path, device=device, dtype=dtype, **scorer_options)

    def score(self, items: list[ScoreRequest]) -> tuple[list[TeacherPayload], float, float, float | None]:
        """Score a batch; returns the payloads, wall-clock start and end, and the batch's busy
        time (``cpu_seconds``)."""
        self._check_adopted()
        started, cpu0 = time.time(), time.thread_time()
        payloads = self.scorer.score(items)
        return payloads, started, time.time(), cpu_seconds(self.device, cpu0)
