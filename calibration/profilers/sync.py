"""Weight-sync micro-benchmark (stage ``sync``): the part of a sync that pauses a rollout worker.

In the trainer the learner publishes ``TorchLearner.weights_for_sync()`` (detached CPU copies of
the ``state_dict``) to Ray's object store, and ``RolloutWorker.load_weights`` fetches it
(``ray.get``: the tensors are deserialised) and applies it with
``TorchRolloutEngine.set_weights`` (``load_state_dict``; host-to-device on a GPU). A point times
the worker side of that path without Ray: ``pickle.loads`` of the published state (protocol 5,
as Ray serialises a dict of tensors) plus ``set_weights``, median of 5 after a warm-up.

Sizes: the real student (``scale = 1``) and copies of its architecture with ``hidden_size`` and
``intermediate_size`` multiplied by ``scale`` (randomly initialised; only the bytes matter),
up to about max(64 MiB, the student's size), so the fit can separate a fixed cost from a
per-byte one: ``t = sync_fixed_s + bytes / sync_bytes_per_s``. ``measure`` records the point's
``bytes`` and ``params``.
"""

from __future__ import annotations

import pickle
from typing import Any

from asyncopd.backends.base import WeightUpdate
from calibration.profilers.bench import Bench, median_seconds, spread

ROLE = "rollout"
CAP_BYTES = 64 * 2**20
SCALES = (0.25, 0.5, 1, 2, 4, 8, 16)


def _state(model: Any) -> dict[str, Any]:
    """What ``TorchLearner.weights_for_sync`` publishes: detached CPU copies of the state dict."""
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def _bytes(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def plan(bench: Bench) -> list[dict[str, Any]]:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(bench.models.student), local_files_only=True)
    hidden, heads = int(c.hidden_size), int(c.num_attention_heads)
    base = _bytes(bench.rollout.model)
    ok = []
    for s in SCALES:
        h = hidden * s
        if h != int(h) or int(h) % heads or (int(h) // heads) % 2:
            continue
        if s != 1 and base * s * s > max(CAP_BYTES, base * 1.01):
            continue
        ok.append({"stage": "sync", "scale": s})
    return [ok[[s["scale"] for s in ok].index(1)]] + spread([s for s in ok if s["scale"] != 1], ("scale",))


def _scaled_model(bench: Bench, scale: float) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    base = bench.rollout.model
    cfg = type(base.config).from_dict(base.config.to_dict())
    heads = cfg.num_attention_heads
    cfg.hidden_size = int(cfg.hidden_size * scale)
    cfg.intermediate_size = int(cfg.intermediate_size * scale)
    if getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = cfg.hidden_size // heads
    model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype=getattr(torch, bench.cfg.models.dtype), device=bench.device).eval()


def measure(bench: Bench, spec: dict[str, Any]) -> float:
    from asyncopd.backends.torch_backend import TorchRolloutEngine  # (lazy: torch)

    engine = bench.rollout
    if spec["scale"] != 1:
        engine = TorchRolloutEngine(_scaled_model(bench, spec["scale"]), eos_id=None, pad_id=bench.codec.pad_id,
                                    max_new_tokens=1, device=bench.device)
    blob = pickle.dumps(_state(engine.model), protocol=5)
    spec["bytes"] = _bytes(engine.model)
    spec["params"] = sum(p.numel() for p in engine.model.parameters())
    version = engine.version
    t = median_seconds(lambda: engine.set_weights(WeightUpdate(version, pickle.loads(blob), "keep")), bench,
                       warmup=1, repeats=5)
    return t
