"""The built-in tiny models: architectures and training recipes of ``builtin-teacher`` and
``builtin-student``.

Everything here enters the cache key of a built model (see ``asyncopd.models.builtin``):
change a field and the next ``resolve_model`` call trains a fresh checkpoint. Bump
``RECIPE_VERSION`` when the training *code* changes in a way that changes the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

RECIPE_VERSION = "builtin-v3"


@dataclass(frozen=True)
class Arch:
    """A small Llama-style causal LM (``transformers.LlamaForCausalLM``); every field is a
    ``LlamaConfig`` keyword (``LlamaConfig(vocab_size=..., **arch.as_dict())``)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 320  # >= the longest sequence: 2*52+2 prompt + 3*52+3 response
    tie_word_embeddings: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """Supervised training on the task's reference responses (loss on response tokens only).

    Early stop: every ``check_every`` steps the model's exact-match accuracy on
    ``check_prompts`` problems of the task's ``"sft-check"`` split is measured with one
    teacher-forced forward pass (a response is greedily reproduced exactly iff every one of
    its tokens is the argmax under teacher forcing, so this *is* greedy accuracy, at the cost
    of a single forward). Training stops at the first check with accuracy >= ``stop_accuracy``,
    or after ``steps`` steps.
    """

    steps: int  # at most this many optimizer steps
    batch_size: int
    lr: float
    warmup_steps: int = 20
    schedule: str = "constant"  # "constant" after warmup, or "cosine" to lr * min_lr_ratio at `steps`
    min_lr_ratio: float = 0.1
    stop_accuracy: Optional[float] = None
    min_steps: int = 0  # no early stop before this many steps
    check_every: int = 25
    check_prompts: int = 256
    # Restart from a fresh initialisation (seed + 1000 * attempt) when a run ends below
    # ``accept_accuracy`` on the check set: tiny models occasionally stall on a plateau.
    accept_accuracy: Optional[float] = None
    max_attempts: int = 1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    # Fraction of training problems whose term count is drawn uniformly from
    # [min_terms, max_terms] instead of from the task's (possibly skewed) distribution:
    # long problems are rare under a skewed distribution but decide the accuracy.
    uniform_length_frac: float = 0.5
    init_std: float = 0.02

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    arch: Arch
    recipe: Recipe
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def key_material(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch.as_dict(), "recipe": self.recipe.as_dict(),
                "extra": dict(self.extra)}


TEACHER = Preset(
    name="builtin-teacher",
    arch=Arch(hidden_size=64, intermediate_size=192, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=4),
    recipe=Recipe(steps=1200, batch_size=32, lr=2e-3, warmup_steps=50, schedule="cosine",
                  uniform_length_frac=0.5, stop_accuracy=0.98, check_every=25,
                  accept_accuracy=0.92, max_attempts=3),
    description="supervised until >= 98% exact match on a held-out check set",
)

STUDENT = Preset(
    name="builtin-student",
    arch=Arch(hidden_size=48, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2),
    recipe=Recipe(steps=600, batch_size=32, lr=3e-3, warmup_steps=50, uniform_length_frac=0.0,
                  stop_accuracy=0.10, min_steps=300, check_every=10),
    description="short supervised warm start: well-formed responses, low accuracy "
                "(stops once >= 10% exact match on the check set after 300 steps, or at 600)",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (TEACHER, STUDENT)}
