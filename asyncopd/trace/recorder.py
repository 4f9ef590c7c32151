"""RunRecorder: the controller's observer that writes a run directory.

Both drivers attach one, so a simulated run and a real run produce the same files
(schema: ``docs/trace-format.md``, validated by ``asyncopd.trace.schema``):

- ``run.json``      what ran: driver, clock, policy, config, versions, start time;
- ``samples.jsonl`` one line per sample attempt when it ends (consumed/evicted/aborted/unfinished);
- ``log.jsonl``     one line per learner update;
- ``trace.json``    Chrome/Perfetto trace events (JSON array format, streamed: a crash leaves
                    a loadable file), one track per worker (and per rollout slot);
- ``summary.json``  whole-run throughput, utilisation and staleness, written at stop.

Lines are flushed as they are written, so a crash mid-run loses no completed sample.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping

from asyncopd.control.controller import Controller
from asyncopd.control.ledger import Attempt
from asyncopd.control.messages import role_of
from asyncopd.trace.stats import QueueTracker, busy_by_stage, staleness_summary

STAGE_OF_SPAN = {"generate": "generate", "generate (aborted)": "generate", "score": "teacher",
                 "train": "train", "sync": "sync"}
_PIDS = {"rollout": 1, "teacher": 2, "learner": 3}


class _NullSink:
    def write(self, _: str) -> int:
        return 0

    def close(self) -> None:
        pass


class RunRecorder:
    def __init__(self, run_dir: str | Path | None, *, driver: str, clock: str, meta: Mapping[str, Any],
                 workers: Mapping[str, int]) -> None:
        """``workers``: worker name -> number of lanes (rollout slots; 1 for others).
        ``run_dir=None`` keeps only the summary in memory (fast searches over many layouts)."""
        self.dir = Path(run_dir) if run_dir is not None else None
        self.driver, self.clock = driver, clock
        # Real runs flush every line (a crash loses nothing); simulated runs buffer for speed.
        buffering = 1 if clock == "wall" else -1
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "run.json").write_text(json.dumps({"driver": driver, "clock": clock, **meta}, indent=2,
                                                          default=str))
        self._samples = self._open("samples.jsonl", buffering)
        self._log = self._open("log.jsonl", buffering)
        self._trace = self._open("trace.json", buffering)
        self._trace.write("[\n")
        self._annotations: dict[int, dict[str, Any]] = {}
        self._consumed_by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self._open_spans: list[tuple[str, float, float]] = []  # (stage, start, end) still relevant
        self._all_busy: Counter[str] = Counter()
        self._role_busy: Counter[tuple[str, str]] = Counter()
        self._staleness_means: list[float] = []
        self._staleness_maxes: list[int] = []
        self._last_step_end = 0.0
        self._consumed = 0
        self._tokens = 0
        self._status: Counter[str] = Counter()
        self.queues = QueueTracker(Controller.QUEUES)
        self.workers = dict(workers)
        self.summary: dict[str, Any] = {}
        self.closed = False
        self._write_track_names()

    def _open(self, name: str, buffering: int) -> Any:
        return (self.dir / name).open("w", buffering=buffering) if self.dir is not None else _NullSink()

    # ------------------------------------------------------------------ input
    def annotate(self, sample_id: int, **fields: Any) -> None:
        """Attach driver-specific fields (e.g. ``correct``) to a sample's record."""
        self._annotations.setdefault(sample_id, {}).update(fields)

    def on_sample(self, a: Attempt) -> None:
        extra = self._annotations.pop(a.sample_id, None) or {}
        if self.dir is not None:
            self._samples.write(json.dumps({**a.record(), "extra": extra}) + "\n")
        self._status[a.status] += 1
        if a.status == "consumed":
            st = a.staleness
            assert st is not None and a.consumed_step is not None
            self._consumed_by_step[a.consumed_step].append((a.response_tokens, st.mean, st.max, extra.get("correct")))

    def on_span(self, name: str, worker: str, lane: int, start: float, end: float, args: dict[str, Any]) -> None:
        stage = STAGE_OF_SPAN.get(name, name)
        if self.dir is not None:
            ev = {"name": name, "cat": stage, "ph": "X", "ts": round(start * 1e6, 1),
                  "dur": round(max(0.0, end - start) * 1e6, 1), "pid": _PIDS.get(role_of(worker), 9),
                  "tid": self._tid(worker, lane), "args": {"worker": worker, **args}}
            self._trace.write(json.dumps(ev) + ",\n")
        dur = max(0.0, end - start)
        self._all_busy[stage] += dur
        self._role_busy[(worker, stage)] += dur
        self._open_spans.append((stage, start, end))

    def on_queues(self, t: float, depths: tuple[int, ...]) -> None:
        self.queues.observe(t, depths)

    def on_step(self, info: dict[str, Any]) -> None:
        step, t_end = info["step"], info["train_end"]
        consumed = self._consumed_by_step.pop(step, [])
        lengths = [r[0] for r in consumed] or [0]
        tokens = sum(lengths)
        means = [r[1] for r in consumed]
        maxes = [r[2] for r in consumed]
        self._staleness_means += means
        self._staleness_maxes += maxes
        step_time = t_end - self._last_step_end
        busy = busy_by_stage(self._open_spans, self._last_step_end, t_end)
        self._open_spans = [s for s in self._open_spans if s[2] > t_end]
        self._consumed += len(consumed)
        self._tokens += tokens
        correct = [r[3] for r in consumed if r[3] is not None]
        rec = {
            "step": step,
            "version": info["version"],
            "t_issue": info["issued_at"],
            "t_start": info["train_start"],
            "t_end": t_end,
            "step_time_s": step_time,
            "train_time_s": t_end - info["train_start"],
            "samples": len(consumed),
            "tokens": tokens,
            "response_len": {"mean": statistics.fmean(lengths), "min": min(lengths), "max": max(lengths)},
            "staleness": staleness_summary(means, maxes),
            "queues": info["queues"],
            "busy_s": busy,
            "samples_per_s": len(consumed) / step_time if step_time > 0 else None,
            "tokens_per_s": tokens / step_time if step_time > 0 else None,
            "samples_per_s_cum": self._consumed / t_end if t_end > 0 else None,
            "counters": info["counters"],
        }
        for k, v in info["metrics"].items():  # learner metrics never overwrite the recorder's fields
            rec[k if k not in rec else f"learner_{k}"] = _finite(v)
        if correct:
            rec["accuracy"] = sum(bool(c) for c in correct) / len(correct)
        self._log.write(json.dumps(rec) + "\n")
        self._last_step_end = t_end

    def on_stop(self, summary: dict[str, Any]) -> None:
        if self.closed:
            return
        t_end = summary["t_end"]
        full = {
            "driver": self.driver,
            "clock": self.clock,
            **summary,
            "duration_s": t_end,
            "steps": summary["version"],
            "samples_consumed": self._consumed,
            "tokens_consumed": self._tokens,
            "samples_per_s": self._consumed / t_end if t_end > 0 else None,
            "tokens_per_s": self._tokens / t_end if t_end > 0 else None,
            "steps_per_hour": 3600 * summary["version"] / t_end if t_end > 0 else None,
            "busy_s": dict(self._all_busy),
            "utilisation": self._utilisation(t_end),
            "staleness": staleness_summary(self._staleness_means, self._staleness_maxes),
            "sample_status": dict(self._status),
            "queues_time_avg": self.queues.time_averages(t_end),
        }
        self.summary = full
        if self.dir is not None:
            (self.dir / "summary.json").write_text(json.dumps(full, indent=2))
            self.queues.write_csv(self.dir / "queues.csv")
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._trace.write(json.dumps({"name": "end", "ph": "M", "pid": 0, "tid": 0, "args": {}}) + "\n]\n")
        for f in (self._samples, self._log, self._trace):
            f.close()

    # ---------------------------------------------------------------- helpers
    def _utilisation(self, t_end: float) -> dict[str, float]:
        """Busy fraction per role over the run: ``rollout`` is slot occupancy (generation
        seconds summed over slots / (duration x total slots)); ``rollout_sync`` the fraction of
        worker time spent loading weights; ``teacher`` / ``learner``: busy seconds /
        (duration x workers)."""
        if t_end <= 0:
            return {}
        names = {r: [w for w in self.workers if role_of(w) == r] for r in ("rollout", "teacher", "learner")}

        def frac(workers: list[str], stage: str, lanes: int) -> float:
            busy = sum(self._role_busy[(w, stage)] for w in workers)
            return min(1.0, busy / (t_end * max(1, lanes)))

        return {
            "rollout": frac(names["rollout"], "generate", sum(self.workers[w] for w in names["rollout"])),
            "rollout_sync": frac(names["rollout"], "sync", len(names["rollout"])),
            "teacher": frac(names["teacher"], "teacher", len(names["teacher"])),
            "learner": frac(names["learner"], "train", len(names["learner"])),
        }

    def _tid(self, worker: str, lane: int) -> int:
        """One track per teacher/learner worker; per rollout worker one sync track + one per slot."""
        idx = int(worker.rsplit("-", 1)[1])
        if role_of(worker) != "rollout":
            return idx * 1000
        return idx * 1000 + (lane + 1 if lane >= 0 else 0)

    def _write_track_names(self) -> None:
        for role, pid in _PIDS.items():
            self._trace.write(json.dumps({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                          "args": {"name": role}}) + ",\n")
        for w, lanes in self.workers.items():
            pid = _PIDS.get(role_of(w), 9)
            self._trace.write(json.dumps({"name": "thread_name", "ph": "M", "pid": pid, "tid": self._tid(w, -1),
                                          "args": {"name": f"{w} sync" if role_of(w) == "rollout" else w}}) + ",\n")
            if role_of(w) == "rollout":
                for lane in range(lanes):
                    self._trace.write(json.dumps({"name": "thread_name", "ph": "M", "pid": pid,
                                                  "tid": self._tid(w, lane), "args": {"name": f"{w} slot {lane}"}})
                                      + ",\n")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
