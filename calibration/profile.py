"""Calibration profiles: one YAML file, written by ``asyncopd calibrate`` (hardware micro-benchmarks
or ``--from-run``) and read by ``asyncopd simulate --costs PROFILE`` and ``calibrate --check``.

Layout of a profile (every writer adds the metadata block)::

    source: profile | run          # micro-benchmarks of the engines, or a fit to a recorded run
    date: 2026-...T...+00:00       # ISO 8601, when the profile was written
    sim: {costs: {...}}            # SimCosts fields: what `simulate --costs` applies
    fit: {STAGE: {params, mape, n}}
    hardware: {platform, machine, cpu_model, cpu_count, usable_cores, torch_threads, gpu}
    versions: {python, torch, transformers, numpy, scipy, asyncopd}
    model: {student, teacher, dtype}   # preset name or path, parameter counts when known
    config: {...}                  # the resolved config (so --check can re-measure), when known
    ...                            # source-specific: raw points, extras, notes, source_run

``hardware`` describes the machine that *wrote* the profile; for ``source: run`` that is where
``calibrate --from-run`` ran, which need not be where the run was recorded.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Optional

import yaml

from asyncopd.config.schema import SimCosts

LIBRARIES = ("torch", "transformers", "numpy", "scipy", "asyncopd")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name() -> Optional[str]:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - no torch / broken driver: report no GPU
        return None


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = _md.version(lib)
        except _md.PackageNotFoundError:
            out[lib] = None
    return out


def hardware(torch_threads: Optional[dict[str, int]] = None) -> dict[str, Any]:
    """The machine writing the profile; ``torch_threads`` per role when the profilers pinned them."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "usable_cores": usable, "torch_threads": torch_threads,
            "gpu": _gpu_name()}


def metadata(torch_threads: Optional[dict[str, int]] = None) -> dict[str, Any]:
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "hardware": hardware(torch_threads), "versions": versions()}


def model_spec(spec: Any) -> Optional[str]:
    """A config's ``models.<role>`` as a preset name or a path string."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return spec.get("preset") or spec.get("path")
    return getattr(spec, "preset", None) or (str(spec.path) if getattr(spec, "path", None) else None)


def write_profile_dict(data: dict[str, Any], path: str | Path) -> Path:
    """Write ``data`` as a profile YAML, adding ``date`` / ``hardware`` / ``versions`` where missing.
    Keys keep their order; the metadata goes right after ``source``."""
    meta = metadata((data.get("hardware") or {}).get("torch_threads"))
    head = {k: data[k] for k in ("source",) if k in data}
    head.update({k: data.get(k) or meta[k] for k in ("date", "hardware", "versions")})
    body = {**head, **{k: v for k, v in data.items() if k not in head}}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(_plain(body), sort_keys=False))
    return p


def _plain(x: Any) -> Any:
    """numpy scalars and tuples → plain Python, so ``yaml.safe_dump`` accepts the tree."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def read_profile(path: str | Path) -> dict[str, Any]:
    """The profile as a mapping; ``FileNotFoundError`` / ``ValueError`` (one line naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"calibration profile not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ValueError(f"{p}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a calibration profile is a mapping (sim.costs, fit, ...)")
    return data


def profile_costs(path: str | Path, data: Optional[dict[str, Any]] = None):
    """The profile's ``sim.costs`` validated as ``SimCosts`` (defaults for fields it leaves out)."""
    from pydantic import ValidationError

    data = read_profile(path) if data is None else data
    costs = (data.get("sim") or {}).get("costs") if isinstance(data.get("sim"), dict) else None
    if not isinstance(costs, dict):
        raise ValueError(f"{path}: no sim.costs mapping in this calibration profile")
    try:
        return SimCosts.model_validate(costs)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{path}: sim.costs.{where}: {first['msg']}") from None


def profile_overrides(path: str | Path) -> list[str]:
    """``--set`` overrides that apply a saved profile's ``sim.costs`` to a config. Mappings
    (``colocation_pairs``) are applied key by key: a pair the profile does not measure keeps the
    config's value, as does a field the profile leaves unset (null)."""
    p = Path(path)
    data = read_profile(p)
    costs = (data.get("sim") or {}).get("costs") if isinstance(data.get("sim"), dict) else None
    if not isinstance(costs, dict):
        raise ValueError(f"{p}: no sim.costs mapping in this calibration profile")
    out = []
    for k, v in costs.items():
        if v is None:  # (not measured, e.g. rollout_dispatch_s of a profile without a run: keep the config's)
            continue
        if isinstance(v, dict):
            out += [f"sim.costs.{k}.{sub}={x!r}" for sub, x in v.items()]
        else:
            out.append(f"sim.costs.{k}={v!r}")
    return out
