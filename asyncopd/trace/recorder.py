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
import os
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping

from asyncopd.control.controller import Controller
from asyncopd.control.ledger import Attempt
from asyncopd.control.messages import role_of
from asyncopd.trace.schema import write_atomic
from asyncopd.trace.stats import QueueTracker, busy_by_stage, read_queues_csv, staleness_summary

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
                 workers: Mapping[str, int], resume_from: int | None = None) -> None:
        """``workers``: worker name -> number of lanes (rollout slots; 1 for others).
        ``run_dir=None`` keeps only the summary in memory (fast searches over many layouts).

        ``resume_from=N`` continues the run directory ``run_dir`` from a checkpoint at version
        ``N`` (see ``_restore``): what updates ``>= N`` recorded is moved aside, the files are
        appended to, the whole-run figures carry on from what is kept, and the clock goes on
        from ``t_origin`` (the latest time recorded so far) instead of 0."""
        self.dir = Path(run_dir) if run_dir is not None else None
        self.driver, self.clock = driver, clock
        # Real runs flush every line (a crash loses nothing); simulated runs buffer for speed.
        buffering = 1 if clock == "wall" else -1
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
        self.queues = QueueTracker(Controller.QUEUES, keep_timeline=run_dir is not None)  # (queues.csv)
        self.workers = dict(workers)
        self.summary: dict[str, Any] = {}
        self.summary_extra: dict[str, Any] = {}  # merged into summary.json (drivers add what they know)
        self.closed = False
        self.t_origin = 0.0
        self.next_sample_id = 0  # above every sample id recorded so far (a resumed run continues from here)
        self.resumed_from = resume_from
        self._named_tracks: set[tuple[int, int]] = set()
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and self.dir is not None:
            self._restore(resume_from, meta)
            self._samples = self._open("samples.jsonl", buffering, "a")
            self._log = self._open("log.jsonl", buffering, "a")
            self._trace = self._open("trace.json", buffering, "a")
            self._trace.write(json.dumps({"name": f"resumed from step {resume_from}", "ph": "i", "s": "g", "pid": 0,
                                          "tid": 0, "ts": round(self.t_origin * 1e6, 1),
                                          "args": {"resumed_from": resume_from}}) + ",\n")
        else:
            if self.dir is not None:
                (self.dir / "run.json").write_text(json.dumps({"driver": driver, "clock": clock, **meta}, indent=2,
                                                              default=str))
            self._samples = self._open("samples.jsonl", buffering)
            self._log = self._open("log.jsonl", buffering)
            self._trace = self._open("trace.json", buffering)
            self._trace.write("[\n")
        if self.dir is not None:  # (the trace's track names; in memory there is no trace)
            self._write_track_names()

    def _open(self, name: str, buffering: int, mode: str = "w") -> Any:
        return (self.dir / name).open(mode, buffering=buffering) if self.dir is not None else _NullSink()

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
            self._open_spans.append((stage, start, end))  # (for log.jsonl's busy_s)
        dur = end - start if end > start else 0.0
        self._all_busy[stage] += dur
        self._role_busy[(worker, stage)] += dur

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
        self._consumed += len(consumed)
        self._tokens += tokens
        step_time = t_end - self._last_step_end
        if self.dir is None:  # in memory: the summary needs only the sums above, not the log line
            self._last_step_end = t_end
            return
        busy = busy_by_stage(self._open_spans, self._last_step_end, t_end)
        self._open_spans = [s for s in self._open_spans if s[2] > t_end]
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
        if self.resumed_from is not None:
            full["resumed_from"] = self.resumed_from
        full.update(self.summary_extra)
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

    # ----------------------------------------------------------------- resume
    def _restore(self, version: int, meta: Mapping[str, Any]) -> None:
        """Prepare ``self.dir`` to continue from a checkpoint at ``version``.

        - ``log.jsonl`` keeps steps ``< version`` (they must be ``0 .. version-1``); later steps
          (their updates are lost with the learner state) move to ``log.rolled_back.jsonl``;
        - ``samples.jsonl`` keeps every record except samples consumed by those lost updates,
          which move to ``samples.rolled_back.jsonl``; an incomplete last line (a hard kill
          mid-write) is dropped;
        - ``trace.json`` keeps every complete event (it is a timeline of what ran, lost
          updates included) and is reopened for appending;
        - the whole-run accumulators (consumed samples and tokens, staleness, busy time, sample
          status, queue integrals) are rebuilt from what is kept, so ``summary.json`` covers
          the whole run;
        - ``run.json`` gets the new ``meta`` and a ``resumes`` entry.
        """
        assert self.dir is not None
        d = self.dir
        moved = {"log": 0, "samples": 0}

        def split(name: str, rolled_back: Any) -> list[dict[str, Any]]:
            path = d / name
            kept_lines, kept, dropped = [], [], []
            text = path.read_text() if path.is_file() else ""
            lines = text.split("\n")
            partial = lines.pop() if lines else ""  # text after the last newline: an unfinished line
            for line in lines:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    rec = None
                if isinstance(rec, dict) and isinstance(rec.get("sample_id"), int):
                    self.next_sample_id = max(self.next_sample_id, rec["sample_id"] + 1)
                if rec is None or rolled_back(rec):
                    dropped.append(line)
                else:
                    kept_lines.append(line)
                    kept.append(rec)
            if dropped:
                with (d / name.replace(".jsonl", ".rolled_back.jsonl")).open("a") as f:
                    f.write("".join(x + "\n" for x in dropped))
            if dropped or partial.strip():
                write_atomic(path, "".join(x + "\n" for x in kept_lines))
            moved[name.split(".")[0]] = len(dropped)
            return kept

        steps = split("log.jsonl", lambda r: not isinstance(r.get("step"), int) or r["step"] >= version)
        if [r["step"] for r in steps] != list(range(version)):
            raise ValueError(f"{d / 'log.jsonl'} records steps {[r['step'] for r in steps][:8]}..., not 0..{version - 1}: "
                             f"cannot resume this run directory from version {version}")
        samples = split("samples.jsonl", lambda r: r.get("status") == "consumed"
                        and (r.get("consumed_step") is None or r["consumed_step"] >= version))

        self._last_step_end = steps[-1]["t_end"] if steps else 0.0
        t_max = self._last_step_end
        for r in samples:
            self._status[r["status"]] += 1
            t_max = max([t_max, *(r[k] for k in ("issued_at", "gen_end", "ready_at", "consumed_at")
                                  if isinstance(r.get(k), (int, float)))])
            if r["status"] == "consumed":
                self._consumed += 1
                self._tokens += int(r["response_tokens"])
                self._staleness_means.append(float(r["staleness_mean"]))
                self._staleness_maxes.append(int(r["staleness_max"]))

        # trace.json: keep the complete events, one per line as written; reopen without the closing "]"
        trace, tmp = d / "trace.json", d / "trace.json.tmp"
        with tmp.open("w") as out:
            out.write("[\n")
            if trace.is_file():
                with trace.open() as f:
                    for line in f:
                        body = line.strip().rstrip(",")
                        if not body.startswith("{"):
                            continue  # "[", "]" or blank
                        try:
                            ev = json.loads(body)
                        except json.JSONDecodeError:
                            continue  # an event cut short by a hard kill
                        if ev.get("name") == "end" and ev.get("ph") == "M":
                            continue  # the previous part's closing marker
                        out.write(body + ",\n")
                        t_max = max(t_max, self._replay_trace_event(ev))
        os.replace(tmp, trace)

        previous = d / "summary.json"
        if previous.is_file():
            try:
                prev = json.loads(previous.read_text())
            except json.JSONDecodeError:
                prev = {}
            duration = prev.get("duration_s")
            if isinstance(duration, (int, float)) and duration > 0:
                t_max = max(t_max, float(duration))
                self.queues.restore(float(duration), prev.get("queues_time_avg") or {}, read_queues_csv(d / "queues.csv"))
        self.t_origin = t_max

        info_path = d / "run.json"
        old = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info = {**old, "driver": self.driver, "clock": self.clock, **meta, "created": old.get("created", meta.get("created"))}
        info["resumes"] = [*old.get("resumes", []), {"from_step": version, "at": meta.get("created"), "t": t_max,
                                                       "rolled_back_steps": moved["log"],
                                                       "rolled_back_samples": moved["samples"]}]
        write_atomic(info_path, json.dumps(info, indent=2, default=str))
        self.summary_extra["resume"] = {"from_step": version, "t_origin": t_max, "rolled_back_steps": moved["log"],
                                        "rolled_back_samples": moved["samples"]}

    def _replay_trace_event(self, ev: dict[str, Any]) -> float:
        """Fold one event of the earlier part of a resumed run into the accumulators; return its end time."""
        if ev.get("ph") == "M" and ev.get("name") in ("process_name", "thread_name"):
            self._named_tracks.add(_track_key(ev["name"], int(ev.get("pid", 0)), int(ev.get("tid", 0))))
            return 0.0
        if ev.get("ph") != "X" or not isinstance(ev.get("ts"), (int, float)):
            return 0.0
        start, dur = ev["ts"] / 1e6, max(0.0, float(ev.get("dur") or 0.0)) / 1e6
        stage = STAGE_OF_SPAN.get(ev.get("name", ""), ev.get("cat", ""))
        worker = (ev.get("args") or {}).get("worker", "")
        self._all_busy[stage] += dur
        self._role_busy[(worker, stage)] += dur
        if start + dur > self._last_step_end:  # (still counts towards the next step's busy_s)
            self._open_spans.append((stage, start, start + dur))
        return start + dur

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
        """Name every track once (a resumed run names only tracks the earlier part did not)."""
        def name(kind: str, pid: int, tid: int, label: str) -> None:
            key = _track_key(kind, pid, tid)
            if key not in self._named_tracks:
                self._named_tracks.add(key)
                self._trace.write(json.dumps({"name": kind, "ph": "M", "pid": pid, "tid": tid,
                                              "args": {"name": label}}) + ",\n")

        for role, pid in _PIDS.items():
            name("process_name", pid, 0, role)
        for w, lanes in self.workers.items():
            pid = _PIDS.get(role_of(w), 9)
            name("thread_name", pid, self._tid(w, -1), f"{w} sync" if role_of(w) == "rollout" else w)
            if role_of(w) == "rollout":
                for lane in range(lanes):
                    name("thread_name", pid, self._tid(w, lane), f"{w} slot {lane}")


def _track_key(kind: str, pid: int, tid: int) -> tuple[int, int]:
    return (pid, -1) if kind == "process_name" else (pid, tid)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
