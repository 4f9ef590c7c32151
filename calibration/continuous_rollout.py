"""The rollout fit's data for a continuous-batching run (``rollout.batching: continuous``).

Under continuous batching sequences join a running batch in groups (each group one prefill)
and leave as they end, so the wave regression (``from_run._rollout_data``: every sequence of a
wave starts together) does not apply. For a finished sequence ``j`` on a worker, alive over
``[s_j, e_j)`` with ``L_j`` response tokens, the worker runs ``L_j`` decode steps while ``j`` is
in the batch (each step samples one token for every row), each costing ``a + b * n`` with
``n`` rows, and it stalls for every group's prefill that starts meanwhile:

    T_j = p * P_j + c * J_j + a * L_j + b * N_j      (+ any sync pause inside, taken out)

- ``P_j``, ``J_j``: the prompt tokens and the number of the groups that join in ``[s_j, e_j)``,
  its own included (``prefill_per_token_s``, ``prefill_fixed_s``: a prefill call's own cost);
- ``N_j = sum_k n_kj``: the tokens every sequence ``k`` of the worker (``j`` too, aborted ones
  too) sampled while ``j`` was in the batch, the sum of the batch size over ``j``'s steps.
  With the trace's start and end only, ``k`` is taken to sample at an even rate:
  ``n_kj = L_k * |[s_k, e_k) & [s_j, e_j)| / (e_k - s_k)`` (exact for ``j`` itself; for a wave,
  where all start together, it gives the wave fit's ``min(L_k, L_j)``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from calibration.run_data import _pause_interval

COLUMNS = ["prefill_per_token_s", "prefill_fixed_s", "decode_step_s", "decode_per_seq_s"]


def continuous_rows(samples: list[dict[str, Any]], syncs: list[dict[str, Any]]
                    ) -> tuple[np.ndarray, list[tuple[str, float, float]], list[list[tuple[float, float]]]]:
    """Rows ``[P_j, J_j, L_j, N_j]`` for every finished sequence (``COLUMNS``), with its
    ``(worker, start, end)`` and the sync pauses inside it (clipped)."""
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in samples:
        if r["gen_start"] is not None and r["gen_end"] is not None:
            by_worker[r["worker"]].append(r)
    rows: list[list[float]] = []
    spans: list[tuple[str, float, float]] = []
    inside: list[list[tuple[float, float]]] = []
    for worker, seqs in by_worker.items():
        start = np.array([r["gen_start"] for r in seqs])
        end = np.array([r["gen_end"] for r in seqs])
        tokens = np.array([r["response_tokens"] or 0 for r in seqs], dtype=float)
        rate = np.divide(tokens, end - start, out=np.zeros_like(tokens), where=end > start)
        groups: dict[float, float] = defaultdict(float)
        for r in seqs:
            groups[round(r["gen_start"], 6)] += r["prompt_tokens"]
        g_start = np.array(sorted(groups))
        g_prompt = np.array([groups[g] for g in g_start])
        iv = np.array(sorted(_pause_interval(s) for s in syncs if s["args"]["worker"] == worker)).reshape(-1, 2)
        for j, r in enumerate(seqs):
            if r["status"] == "aborted" or not r["response_tokens"]:
                continue
            s, e = start[j], end[j]
            joined = (g_start >= round(s, 6)) & (g_start < e)
            overlap = np.clip(np.minimum(end, e) - np.maximum(start, s), 0.0, None)
            batch_tokens = float((rate * overlap).sum()) if e > s else float(tokens[j])
            rows.append([float(g_prompt[joined].sum()), float(joined.sum()), float(tokens[j]), batch_tokens])
            spans.append((worker, float(s), float(e)))
            hit = iv[(iv[:, 1] > s) & (iv[:, 0] < e)]
            inside.append([(max(a, s), min(b, e)) for a, b in hit.tolist()])
    return np.array(rows, dtype=float).reshape(-1, 4), spans, inside
