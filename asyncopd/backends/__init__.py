"""Backends for rollout, teacher scoring and learning (torch/transformers; vLLM optional)."""
