"""One config schema for the simulator and the trainer (pydantic v2, ``extra="forbid"``).

Every section is validated up front; cross-section rules (layout fits the cluster, the loss
is supported, ...) live in ``OPDConfig._cross_checks`` so a bad config fails before anything
starts, with a message naming the field.

One module over 400 lines on purpose: every field carries its documentation (``description``)
and its range beside it, and the sections validate against each other, so splitting it would
scatter one reference across files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from asyncopd.catalog import (
    BUILTIN_MODELS, COST_MODEL_NAMES, HARDWARE, UnknownHardwareError, UnknownModelError, get_hardware, get_model,
)
from asyncopd.config.algorithm import AlgorithmConfig, check_backends
from asyncopd.config.colocation import parse_entry

DRIVER_EVENT_KINDS = ("generate", "score", "train", "sync")
from asyncopd.config.memory_shares import check_engine_args, check_shares
from asyncopd.control.policies import Policy, policy_from
from asyncopd.task.config import TaskConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


MemoryShare = Annotated[Optional[float], Field(gt=0, le=1, description=(
    "vLLM: share of each of its devices' memory one worker of this role may use (gpu_memory_utilization "
    "of its engine, and its fractional GPU in Ray); None: an equal split of what the workers with a set "
    "share leave on the device. The shares of the workers on one device, the learner's included, must "
    "add up to <= 1"))]
KvCacheGb = Annotated[Optional[float], Field(gt=0, description=(
    "vLLM: KV-cache size per device in GiB (vLLM's kv_cache_memory_bytes; the engine then ignores "
    "gpu_memory_utilization for the KV cache)"))]
EngineArgs = Annotated[dict[str, Any], Field(default_factory=dict, description=(
    "vLLM: extra engine arguments passed to vllm.LLM unchanged, e.g. {enforce_eager: true}; not those "
    "the layout or this config set (tensor_parallel_size, distributed_executor_backend, model, ...)"))]


class _VllmEngine(_Section):
    """A role that may run a vLLM engine: its ``engine_args`` pass ``check_engine_args`` (the
    fields themselves stay in each role's section, in its own order)."""

    _role: ClassVar[str]

    @field_validator("engine_args", check_fields=False)
    @classmethod
    def _engine_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_engine_args(cls._role, v)


class RunConfig(_Section):
    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    output_dir: str = "runs"
    total_steps: int = Field(30, ge=1, description="learner updates in the run")
    time_budget_s: Optional[float] = Field(
        None, gt=0, description="stop at the next update boundary once the run clock passes this many seconds "
                                "(wall clock for train, from when training starts; simulated time for simulate)")
    checkpoint_every: int = Field(100, ge=0, description="real trainer: save RUN_DIR/checkpoints/step_NNNNNN every "
                                  "N learner updates (0: only checkpoints/final, at the end); `train --resume` "
                                  "continues from the newest, so a lost learner costs at most N-1 updates")
    worker_restarts: int = Field(3, ge=0, description="real trainer: how many times Ray restarts each rollout or "
                                 "teacher worker that died (its work is re-queued; a restarted rollout worker is "
                                 "synced to the newest weights before it generates); 0: a dead worker stays dead")
    keep_checkpoints: int = Field(3, ge=1, description="newest step_* checkpoints kept (checkpoints/final always is)")


class ModelSpec(_Section):
    """Either a built-in tiny model (trained locally once and cached) or a local HF checkpoint.

    A bare string is accepted as shorthand: an existing path → ``{path: ...}``, anything else →
    ``{preset: ...}`` (so ``--set models.student=/ckpt/dir`` and ``--set models.student=qwen3-8b`` work)."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"path": v} if Path(v).expanduser().exists() else {"preset": v}
        return v

    preset: Optional[str] = Field(None, description=" / ".join(BUILTIN_MODELS) + " (trainable), or a public "
                                  "architecture for the simulator only, e.g. qwen3-1.7b")
    path: Optional[str] = Field(None, description="local directory with config.json (+ weights, tokenizer)")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: Optional[str]) -> Optional[str]:
        if v is None or v in BUILTIN_MODELS:
            return v
        try:
            get_model(v)
        except UnknownModelError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("path")
    @classmethod
    def _checkpoint_dir(cls, v: Optional[str]) -> Optional[str]:
        """A local Hugging Face checkpoint: a directory with ``config.json`` (checked when the
        config loads, not when the actors start)."""
        if v is None:
            return v
        p = Path(v).expanduser()
        if not p.is_dir():
            raise ValueError(f"{v} is not a directory (a local Hugging Face checkpoint directory)")
        if not (p / "config.json").is_file():
            raise ValueError(f"{v} has no config.json (not a Hugging Face checkpoint directory)")
        return v

    @property
    def trainable(self) -> bool:
        return self.path is not None or self.preset in BUILTIN_MODELS

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSpec":
        if (self.preset is None) == (self.path is None):
            raise ValueError("give exactly one of 'preset' or 'path'")
        return self


class ModelsConfig(_Section):
    student: ModelSpec = ModelSpec(preset="builtin-student")
    teacher: ModelSpec = ModelSpec(preset="builtin-teacher")
    dtype: Literal["float32", "bfloat16"] = "float32"


class RolloutConfig(_VllmEngine):
    _role = "rollout"
    backend: Literal["torch", "vllm"] = "torch"
    max_num_seqs: int = Field(8, ge=1, description="concurrent sequences per rollout worker")
    batching: Literal["wave", "continuous"] = Field(
        "wave", description="torch backend: wave (a batch decodes until its longest sequence ends, results "
        "return together) or continuous (requests join the running batch as slots free, each result returns "
        "as it ends)")
    min_join: Optional[int] = Field(None, ge=1, description="continuous batching: queued requests join the "
                                    "running batch once at least min(min_join, max_num_seqs) slots are free (one "
                                    "prefill per group), and a worker answers once min_join have ended; default "
                                    "max(1, max_num_seqs // 4)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM: share of device memory a rollout or "
                                          "teacher worker takes when it is alone on its devices (see memory_share)")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    memory_share: MemoryShare = None
    kv_cache_gb: KvCacheGb = None
    engine_args: EngineArgs

    @model_validator(mode="after")
    def _continuous_is_torch(self) -> "RolloutConfig":
        if self.batching == "continuous" and self.backend != "torch":
            raise ValueError("batching: continuous is the torch backend's; the vLLM backend's offline engine "
                             "runs waves here")
        return self

    def join_at(self) -> int:
        """Continuous batching's ``min_join`` (field description)."""
        return self.min_join if self.min_join is not None else max(1, self.max_num_seqs // 4)


class TeacherConfig(_VllmEngine):
    _role = "teacher"
    backend: Literal["torch", "vllm"] = "torch"
    top_k: int = Field(8, ge=1, description="teacher-score cache: top-k ids per position")
    max_batch_samples: int = Field(16, ge=1, description="most samples one teacher prefill takes")
    min_batch_samples: int = Field(1, ge=1, description="fewest samples a teacher prefill waits for while more "
                                                        "generations are in flight")
    memory_share: MemoryShare = None
    kv_cache_gb: KvCacheGb = None
    engine_args: EngineArgs

    @model_validator(mode="after")
    def _min_le_max(self) -> "TeacherConfig":
        if self.min_batch_samples > self.max_batch_samples:
            raise ValueError("min_batch_samples must be <= max_batch_samples")
        return self


class LearnerConfig(_Section):
    batch_size: int = Field(16, ge=1, description="samples per learner update (B)")
    micro_batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: after warm-up, decay to lr * min_lr_ratio at run.total_steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="a learner on N devices runs N data-parallel ranks; ddp: each holds the whole model "
        "and optimizer, gradients are all-reduced; fsdp: parameters, gradients and optimizer state are sharded "
        "across the ranks (FSDP2 fully_shard), for a student that does not fit one device")
    memory_share: Optional[float] = Field(None, gt=0, le=1, description="share of each of its devices' memory "
                                          "the learner keeps free from the vLLM engines that share them (None: an "
                                          "equal split with the other workers there; asyncopd/config/memory_shares.py)")


class PipelineConfig(_Section):
    """``policy`` accepts a string (``sync``, ``step_off(2)``, ``fully_async(eta=2, max_staleness=4)``)
    or a mapping (``{kind: fully_async, eta: 2}``)."""

    policy: str | dict[str, Any] = "fully_async(eta=2)"
    pause_mode: Literal["keep", "abort", "recompute"] = "keep"

    @field_validator("policy")
    @classmethod
    def _parse(cls, v: str | dict[str, Any]) -> str | dict[str, Any]:
        policy_from(v)  # raises ValueError with a precise message
        return v

    def build_policy(self) -> Policy:
        return policy_from(self.policy)


class SyncConfig(_Section):
    """How new weights reach the rollout workers (``asyncopd/runtime/weight_transport.py``)."""

    method: Literal["auto", "object_store", "collective"] = Field(
        "auto", description="collective: the learner broadcasts bucketed weights to each worker through a two-rank "
        "torch.distributed group (gloo on CPU, NCCL on CUDA; torch rollout backend only); object_store: the learner "
        "puts a state dict in Ray's object store and each worker fetches it (3-8x slower on CPU, "
        "bench/weight_sync.py); auto: collective with the torch rollout backend, else object_store")
    bucket_mb: float = Field(64.0, gt=0, description="collective: most megabytes per broadcast")
    verify: bool = Field(False, description="after every sync compare a hash of the worker's weights with the "
                         "learner's (a pass over the weights on both ends); a mismatch stops the run")
    timeout_s: float = Field(300.0, gt=0, description="collective: how long an end waits for its peer")

    @property
    def bucket_bytes(self) -> int:
        return max(1, int(self.bucket_mb * 2**20))

    def resolved(self, rollout_backend: str) -> str:
        """The method ``auto`` stands for with this rollout backend."""
        if self.method != "auto":
            return self.method
        return "collective" if rollout_backend == "torch" else "object_store"


class RoleLayout(_Section):
    workers: int = Field(1, ge=1)
    devices: list[int] = Field(default_factory=lambda: [0], min_length=1,
                               description="device indices this role's workers share")
    tp: int = Field(1, ge=1, description="tensor-parallel degree inside one worker (devices per worker)")

    @model_validator(mode="after")
    def _tp_fits(self) -> "RoleLayout":
        if self.tp > len(self.devices):
            raise ValueError(f"tp={self.tp} needs at least {self.tp} devices, got {self.devices}")
        return self


class LayoutConfig(_Section):
    rollout: RoleLayout = RoleLayout(workers=1, devices=[0])
    teacher: RoleLayout = RoleLayout(workers=1, devices=[1])
    learner: RoleLayout = RoleLayout(workers=1, devices=[1])

    @field_validator("learner")
    @classmethod
    def _one_learner(cls, v: RoleLayout) -> RoleLayout:
        if v.workers != 1:
            raise ValueError("the learner is one worker; give it N devices for N data-parallel ranks "
                             "(learner.strategy: ddp or fsdp)")
        return v


class ClusterConfig(_Section):
    device_type: Literal["cpu", "cuda"] = "cpu"
    hardware: str = Field("cpu", description="hardware preset for analytic costs: " + ", ".join(HARDWARE))
    num_devices: int = Field(2, ge=1, description="CPU cores (device_type=cpu) or GPUs")
    ray_address: Optional[str] = Field(None, description="connect to this Ray cluster instead of starting one")
    devices_per_node: Optional[int] = Field(None, ge=1, description="devices per node: layout device d lives on "
                                            "node d // devices_per_node (None: every device on one node)")

    @model_validator(mode="after")
    def _whole_nodes(self) -> "ClusterConfig":
        if self.devices_per_node is not None and self.num_devices % self.devices_per_node:
            raise ValueError(f"devices_per_node={self.devices_per_node} does not divide "
                             f"num_devices={self.num_devices}")
        return self

    def node_of(self, device: int) -> int:
        """The node (0-based, in the order Ray lists them) that holds layout device ``device``."""
        return device // self.devices_per_node if self.devices_per_node else 0


class LengthDistribution(_Section):
    """Response lengths for the simulator (see sim/lengths.py)."""

    kind: Literal["task", "fixed", "lognormal", "empirical"] = "task"
    mean: float = Field(32.0, gt=0, description="lognormal mean")
    cv: float = Field(0.5, ge=0, description="lognormal coefficient of variation")
    max: int = Field(64, ge=1, description="clip (fixed: the length)")
    path: Optional[str] = Field(None, description="empirical: a run directory / samples.jsonl, or a text/JSON "
                                                  "file of lengths")
    drift_per_step: float = Field(0.0, ge=-0.5, le=1.0,
                                  description="lengths scale by (1 + drift)^version of the weights at admission")

    @model_validator(mode="after")
    def _path_for_empirical(self) -> "LengthDistribution":
        if self.kind == "empirical" and not self.path:
            raise ValueError("kind 'empirical' needs path (a run directory, samples.jsonl or a file of lengths)")
        return self


class SimCosts(_Section):
    """Simple parametric cost model (seconds). Defaults: ``asyncopd calibrate --from-run`` of the
    built-in default (1000 updates, forward KL, fully_async(eta=2)) trained on a 2-core x86 box
    (2026-11-25; per-stage fit MAPE 19-26%); calibrate again on other machines."""

    decode_step_s: float = Field(0.0024, ge=0, description="fixed time per decode step of a batch")
    decode_per_seq_s: float = Field(1.1e-4, ge=0, description="extra time per active sequence per step")
    prefill_per_token_s: float = Field(3e-5, ge=0, description="rollout prefill, per prompt token")
    prefill_fixed_s: float = Field(0.0, ge=0, description="rollout prefill, per call (fitted from continuous-"
                                   "batching runs, whose joins each pay it)")
    teacher_fixed_s: float = Field(0.0092, ge=0)
    teacher_per_token_s: float = Field(4.1e-5, ge=0)
    learner_fixed_s: float = Field(0.0125, ge=0)
    learner_per_token_s: float = Field(1.09e-4, ge=0, description="learner update, per token of the batch; a "
                                       "learner on N devices runs T/N tokens per rank (sim/parametric.py)")
    allreduce_bytes_per_s: float = Field(1.0e9, gt=0, description="data-parallel learner: per-rank link bandwidth of "
                                         "the gradient all-reduce (ring: 2(N-1)/N of the gradient bytes per rank; "
                                         "gloo on the 2-core dev box: 1.07e9 at 256 MB)")
    allreduce_latency_s: float = Field(1.1e-4, ge=0, description="data-parallel learner: latency per ring step of "
                                       "the gradient all-reduce (2(N-1) steps; gloo, 2 ranks, 4 bytes: 0.23 ms)")
    sync_fixed_s: float = Field(0.0149, ge=0, description="weight sync: part that pauses the worker")
    sync_bytes_per_s: float = Field(1e9, gt=0, description="weight sync: bytes per second of model_bytes")
    sync_bucket_latency_s: float = Field(1.4e-4, ge=0, description="sync.method=collective: extra pause per "
                                         "broadcast bucket (ceil(model_bytes / sync.bucket_mb) of them; gloo "
                                         "broadcast of 4 bytes on the 2-core dev box: 0.14 ms)")
    model_bytes: Optional[float] = Field(None, ge=0, description="student weight bytes moved by a sync; None: 0 "
                                         "(folded into sync_fixed_s). A data-parallel learner all-reduces this many "
                                         "gradient bytes; None or 0: the student's parameters x bytes of models.dtype")
    dispatch_s: float = Field(0.006, ge=0, description="latency from an action to its worker starting it "
                                                        "(Ray call + payload transfer)")
    rollout_dispatch_s: Optional[float] = Field(None, ge=0, description="dispatch_s of a rollout wave (from the "
                                                "controller issuing its last request to the wave starting); None: "
                                                "dispatch_s. calibrate --from-run measures it")
    return_s: float = Field(0.0, ge=0, description="latency from a rollout worker finishing a wave (continuous "
                            "batching: a sample) to the driver holding its results (results packed, Ray return, "
                            "driver receipt); 0 = instant. calibrate --from-run measures it (gen_delivered - gen_end)")
    driver_event_s: dict[str, float] = Field(default_factory=dict, description="the driver's time per event it "
                                             "handles, by kind: generate (per sample), score (per batch), train (per "
                                             "update), sync; with any set, events queue at the driver and are handled "
                                             "one at a time (sim/driver.py; empty = instantly). calibrate --from-run "
                                             "takes them from the run's measured main-thread busy time (unplaced_cpu.driver_event_wall_s)")

    @field_validator("driver_event_s")
    @classmethod
    def _driver_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        for key, sec in v.items():
            if key not in DRIVER_EVENT_KINDS:
                raise ValueError(f"driver_event_s: unknown event kind {key!r} (expected one of "
                                 f"{', '.join(DRIVER_EVENT_KINDS)})")
            if not 0 <= sec <= 1:
                raise ValueError(f"driver_event_s[{key!r}] must be within [0, 1] s, got {sec}")
        return {k: float(x) for k, x in v.items()}
    decode_cv: float = Field(0.0, ge=0, le=5, description="run-to-run scatter of decode times (coefficient of "
                             "variation of a lognormal factor per decode segment; 0 = deterministic)")
    teacher_cv: float = Field(0.0, ge=0, le=5, description="scatter of teacher batch times (see decode_cv)")
    learner_cv: float = Field(0.0, ge=0, le=5, description="scatter of learner step times (see decode_cv)")
    sync_cv: float = Field(0.0, ge=0, le=5, description="scatter of weight-sync pauses (see decode_cv)")
    dispatch_cv: float = Field(0.0, ge=0, le=5, description="scatter of dispatch latencies (see decode_cv)")
    run_cv: float = Field(0.10, ge=0, le=5, description="run-to-run scatter of a whole run's throughput on this host "
                          "(coefficient of variation of repeated runs of one config; the 2-core development host "
                          "showed 3-15%): widens prediction intervals (sim/intervals.py), does not change a simulation")
    run_cv_dof: Optional[int] = Field(None, ge=1, description="degrees of freedom of a measured run_cv (runs of one "
                                      "config less one, pooled): intervals then take the run factor at a Student t "
                                      "quantile, as for any spread estimated from few runs; None: run_cv is known")
    model_cv: float = Field(0.05, ge=0, le=5, description="the simulator's own error on a layout or policy its "
                            "calibration did not show (coefficient of variation of a lognormal factor): widens "
                            "prediction intervals. 0.05 = the RMS log error of bench/fidelity.py over 11 combinations "
                            "on the 2-core development host (2026-11-29), less its measured runs' own scatter; the "
                            "benchmark prints the value measured on yours")
    calibration_runs: int = Field(1, ge=1, description="how many runs of one config the costs were averaged over: "
                                  "their level carries run_cv / sqrt(calibration_runs) of error, which prediction "
                                  "intervals add to a new run's own scatter (sim/intervals.py)")
    colocation_factor: float = Field(1.0, ge=0, le=10, description="contention on a shared device: with k workers "
                                     "busy on it, each runs at 1/(1 + factor*(k-1)) of its speed (1 = fair time "
                                     "slicing); used by both cost models, fitted by `calibrate --from-run`")
    colocation_pairs: dict[str, float] = Field(default_factory=dict, description="colocation_factor per pair of "
                                               "roles, e.g. {'teacher+learner': 0.95, 'rollout+rollout': 1.1}, or "
                                               "directed, {'rollout|teacher': 1.65} (what a busy teacher costs a "
                                               "rollout worker; wins over the pair's value); pairs not named use "
                                               "colocation_factor (asyncopd/config/colocation.py)")
    unplaced_share: float = Field(0.0, ge=0, lt=1, description="CPU the layout does not place (the driver "
                                  "process, Ray's own processes), as a fraction of one core: a background load on "
                                  "one core (asyncopd/config/unplaced.py; CPU clusters only). `calibrate --from-run` "
                                  "takes it from the run's unplaced_cpu")
    unplaced_device: Optional[int] = Field(None, ge=0, description="the core that load runs on; None: the one with "
                                           "the fewest rollout workers, then the fewest workers, then the highest "
                                           "index")

    @field_validator("colocation_pairs")
    @classmethod
    def _pairs(cls, v: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, phi in v.items():
            try:
                pair = parse_entry(str(key))
            except ValueError as e:
                raise ValueError(f"colocation_pairs: {e}") from None
            if not 0 <= phi <= 10:
                raise ValueError(f"colocation_pairs[{key!r}] must be within [0, 10], got {phi}")
            out[pair] = float(phi)
        return out


class AnalyticParams(_Section):
    """Overhead terms of the analytic cost model (see sim/analytic.py)."""

    step_s: float = Field(126e-6, ge=0, description="fixed time per decode step")
    layer_s: float = Field(32e-6, ge=0, description="per layer per decode step")
    request_s: float = Field(4e-6, ge=0, description="per active request per decode step")
    kv_read: float = Field(1.9, gt=0, description="KV-cache read inefficiency factor")
    weight_read: float = Field(1.4, gt=0, description="weight read inefficiency factor")
    allreduce_latency_s: float = Field(10e-6, ge=0)
    topk_passes: float = Field(2.0, ge=0, description="passes over the T x V logits for top-k extraction")
    teacher_fixed_s: float = Field(5e-3, ge=0)
    learner_fixed_s: float = Field(0.05, ge=0)
    micro_batch_s: float = Field(5e-3, ge=0)
    sync_ctrl_s: float = Field(0.5, ge=0, description="weight sync control plane (pauses rollout)")
    sync_gather_s: float = Field(0.2, ge=0, description="learner-side gather before a sync (overlaps rollout)")
    dispatch_s: float = Field(1e-3, ge=0, description="latency from an action to its worker starting it")


class SimConfig(_Section):
    cost_model: Literal[tuple(COST_MODEL_NAMES)] = Field(  # type: ignore[valid-type]
        "parametric", description="; ".join(f"{name}: {what}" for name, what in COST_MODEL_NAMES.items()))
    rollout_batching: Literal["auto", "wave", "continuous"] = Field(
        "auto", description="auto: the torch backend's rollout.batching, continuous for vLLM")
    costs: SimCosts = SimCosts()
    analytic: AnalyticParams = AnalyticParams()
    response_length: LengthDistribution = LengthDistribution()
    prompt_tokens_mean: Optional[float] = Field(None, gt=0, description="None: from the task")


class OPDConfig(_Section):
    run: RunConfig = RunConfig()
    models: ModelsConfig = ModelsConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    teacher: TeacherConfig = TeacherConfig()
    learner: LearnerConfig = LearnerConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    pipeline: PipelineConfig = PipelineConfig()
    sync: SyncConfig = SyncConfig()
    layout: LayoutConfig = LayoutConfig()
    cluster: ClusterConfig = ClusterConfig()
    sim: SimConfig = SimConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "OPDConfig":
        n = self.cluster.num_devices
        for role in ("rollout", "teacher", "learner"):
            for d in getattr(self.layout, role).devices:
                if not 0 <= d < n:
                    raise ValueError(f"layout.{role}.devices: device {d} is outside the cluster "
                                     f"(cluster.num_devices={n})")
        core = self.sim.costs.unplaced_device
        if core is not None and core >= n:
            raise ValueError(f"sim.costs.unplaced_device: core {core} is outside the cluster (cluster.num_devices={n})")
        if self.sim.cost_model == "analytic":
            try:
                get_hardware(self.cluster.hardware)
            except UnknownHardwareError as e:
                raise ValueError(f"cluster.hardware: {e}") from None
        if self.learner.micro_batch_size > self.learner.batch_size:
            raise ValueError("learner.micro_batch_size must be <= learner.batch_size")
        check_backends(self.algorithm, self.rollout.backend, self.teacher.backend)
        check_shares(self)
        if self.sync.resolved(self.rollout.backend) == "collective" and self.rollout.backend != "torch":
            raise ValueError("sync.method=collective needs rollout.backend=torch: the vLLM backend loads weights "
                             "through its own engine API; use sync.method=object_store")
        return self

    def policy(self) -> Policy:
        return self.pipeline.build_policy()

    def simulated_batching(self) -> tuple[str, int]:
        """The batching the simulator models (``sim.rollout_batching``) and its ``min_join``:
        vLLM admits a request at the next decode iteration (1)."""
        mode = self.sim.rollout_batching
        if mode == "auto":
            mode = self.rollout.batching if self.rollout.backend == "torch" else "continuous"
        return mode, (self.rollout.join_at() if self.rollout.backend == "torch" else 1)
