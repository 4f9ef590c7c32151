"""The order in which the trainer starts its actors when vLLM engines share GPUs (pure Python).

A vLLM engine sizes its KV cache at start-up from a memory profile of its GPU: it runs a dummy
forward pass and attributes whatever else the device holds at that moment to "other processes".
Two engines profiling one GPU at the same time, or an engine profiling while the learner loads
its model there, each see the other's memory move mid-measurement and size their cache wrongly
(too large: out of memory later; or the start-up check fails). So:

- vLLM workers start in *waves*: no two engines of one wave share a device, and a wave starts
  only when the previous one is ready (greedy: each engine joins the first wave where its devices
  are free; engines on disjoint GPUs still start together);
- every other actor (torch rollout/teacher workers, the learner) starts in a last wave, once all
  engines hold their memory; each engine took only its share, so the rest is free for them.

Without vLLM workers there is one wave with everything (the torch actors start concurrently, as before).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence


def startup_waves(devices: Mapping[str, Sequence[int]], vllm_workers: Iterable[str]) -> list[list[str]]:
    """Waves of worker names (module docstring). ``devices``: every worker's devices, in start
    order (``asyncopd.config.placement.placement``); ``vllm_workers``: those that run a vLLM engine."""
    engines = set(vllm_workers)
    unknown = engines - set(devices)
    if unknown:
        raise ValueError(f"vLLM workers without devices: {sorted(unknown)}")
    waves: list[list[str]] = []
    used: list[set[int]] = []
    for name, devs in devices.items():
        if name not in engines:
            continue
        mine = {int(d) for d in devs}
        for wave, taken in zip(waves, used):
            if not mine & taken:
                wave.append(name)
                taken |= mine
                break
        else:
            waves.append([name])
            used.append(set(mine))
    rest = [name for name in devices if name not in engines]
    return waves + ([rest] if rest else [])


def start_in_waves(waves: Sequence[Sequence[str]], create: Callable[[str], Any],
                   wait: Callable[[list[Any]], Any]) -> dict[str, Any]:
    """Create the actors of each wave (``create(name)`` returns a handle), then ``wait`` for that
    wave's handles (e.g. ``ray.get([h.ready.remote() for h in hs])``) before the next wave.
    Returns name -> handle for every worker."""
    handles: dict[str, Any] = {}
    for wave in waves:
        made = [create(name) for name in wave]
        handles.update(zip(wave, made))
        wait(made)
    return handles
