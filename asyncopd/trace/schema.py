"""The run-directory schema (see docs/trace-format.md) and its validator.

``validate_run_dir(path)`` checks every file a driver writes and raises ``RunFormatError``
naming the file, the line and the field of the first problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TRACE_FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleRecord(_Strict):
    sample_id: int = Field(ge=0)
    prompt_id: int = Field(ge=0)
    attempt: int = Field(ge=0)
    batch: Optional[int] = Field(None, ge=0)
    status: Literal["consumed", "evicted", "aborted", "unfinished"]
    end_reason: Optional[str]
    worker: str
    slot: int = Field(ge=0)
    issued_at: float
    gen_start: Optional[float]
    gen_end: Optional[float]
    gen_delivered: Optional[float] = None  # (absent in traces written before it existed)
    prompt_tokens: int = Field(ge=0)
    response_tokens: int = Field(ge=0)
    version_spans: list[tuple[int, int]]
    score_worker: Optional[str]
    score_start: Optional[float]
    ready_at: Optional[float]
    consumed_step: Optional[int] = Field(None, ge=0)
    consumed_at: Optional[float]
    staleness_mean: Optional[float] = Field(None, ge=0)
    staleness_max: Optional[int] = Field(None, ge=0)
    staleness_min: Optional[int] = Field(None, ge=0)
    exceeded_cap: bool
    extra: dict[str, Any]


class Staleness(_Strict):
    min: Optional[float]
    mean: Optional[float]
    max: Optional[float]
    std: Optional[float]
    max_mean: Optional[float]
    hist: dict[str, int]


class StepRecord(BaseModel):
    model_config = ConfigDict(extra="allow")  # learner metrics (loss, grad_norm, lr, ...) ride along

    step: int = Field(ge=0)
    version: int = Field(ge=1)
    t_issue: float
    t_start: float
    t_end: float
    step_time_s: float = Field(ge=0)
    train_time_s: float = Field(ge=0)
    samples: int = Field(ge=1)
    tokens: int = Field(ge=0)
    response_len: dict[str, float]
    staleness: Staleness
    queues: dict[str, int]
    busy_s: dict[str, float]
    samples_per_s: Optional[float]
    tokens_per_s: Optional[float]
    samples_per_s_cum: Optional[float]
    counters: dict[str, int]


class TraceEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    ph: Literal["X", "M", "i", "C"]
    pid: int
    tid: int
    ts: Optional[float] = None
    dur: Optional[float] = Field(None, ge=0)


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    driver: Literal["sim", "ray"]
    clock: Literal["simulated", "wall"]
    policy: str
    config: dict[str, Any]


class Summary(BaseModel):
    model_config = ConfigDict(extra="allow")

    driver: Literal["sim", "ray"]
    ok: bool
    reason: str
    duration_s: float = Field(ge=0)
    steps: int = Field(ge=0)
    samples_consumed: int = Field(ge=0)
    samples_per_s: Optional[float]
    tokens_per_s: Optional[float]
    utilisation: dict[str, float]
    staleness: Staleness
    sample_status: dict[str, int]


class RunFormatError(ValueError):
    pass


def _check(model: type[BaseModel], obj: Any, where: str) -> None:
    try:
        model.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        raise RunFormatError(f"{where}: {field}: {err['msg']}") from None


def read_json(path: Path) -> Any:
    """A JSON file of a run directory; an unreadable or broken one raises ``RunFormatError`` naming it."""
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise RunFormatError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise RunFormatError(f"{path}: cannot read it ({e.strerror or e.__class__.__name__})") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            raise RunFormatError(f"{path}:{i}: not valid JSON") from None
    return out


def read_trace(path: Path) -> list[dict[str, Any]]:
    """Load a Chrome trace in JSON-array form, tolerating the missing ``]`` of a crashed run."""
    text = _text(path).rstrip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        data = data.get("traceEvents", [])
    return data


def validate_run_dir(run_dir: str | Path, *, require_summary: bool = True) -> dict[str, int]:
    """Validate a run directory; return counts of what was checked."""
    d = Path(run_dir)
    need = ["run.json", "samples.jsonl", "log.jsonl", "trace.json"] + (["summary.json"] if require_summary else [])
    for name in need:
        if not (d / name).is_file():
            raise RunFormatError(f"{d}: missing {name}")
    _check(RunInfo, read_json(d / "run.json"), f"{d / 'run.json'}")
    samples = read_jsonl(d / "samples.jsonl")
    for i, rec in enumerate(samples, 1):
        _check(SampleRecord, rec, f"{d / 'samples.jsonl'}:{i}")
    steps = read_jsonl(d / "log.jsonl")
    for i, rec in enumerate(steps, 1):
        _check(StepRecord, rec, f"{d / 'log.jsonl'}:{i}")
    if [r["step"] for r in steps] != list(range(len(steps))):
        raise RunFormatError(f"{d / 'log.jsonl'}: steps are not 0, 1, 2, ... in order")
    events = read_trace(d / "trace.json")
    for i, ev in enumerate(events):
        _check(TraceEvent, ev, f"{d / 'trace.json'}[{i}]")
    if require_summary:
        _check(Summary, read_json(d / "summary.json"), f"{d / 'summary.json'}")
    return {"samples": len(samples), "steps": len(steps), "trace_events": len(events)}


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader, or a crash, never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
