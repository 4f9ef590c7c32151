"""Catalogues: pure data and its parsing, below the config, the simulator and the planner.

- ``hardware``: accelerator presets (``HARDWARE``, ``get_hardware``) for the analytic costs;
- ``model_desc``: ``ModelDesc``, the architecture figures that decide cost;
- ``hf_config``: a Hugging Face ``config.json`` read into those figures;
- ``model_presets``: public architectures by name (``MODELS``), the built-in tiny models
  (``BUILTIN_MODELS``), ``get_model``;
- ``estimators``: the OPD estimators the learner can optimise (``ESTIMATORS``);
- ``COST_MODEL_NAMES`` below: the simulator's cost models by name (``sim.cost_model``; the
  implementations register under these names in ``sim/``).

Each list is the only one of its kind: the config's choices, ``Literal`` types and help texts
derive from it. Importing this package imports neither torch, ray nor simpy.
"""

from __future__ import annotations

from asyncopd.catalog.estimators import ESTIMATORS, EstimatorSpec
from asyncopd.catalog.hardware import HARDWARE, Hardware, UnknownHardwareError, get_hardware
from asyncopd.catalog.model_desc import ModelConfigError, ModelDesc, from_hf_config
from asyncopd.catalog.model_presets import (
    BUILTIN_MODELS, MODELS, UnknownModelError, builtin_model_desc, get_model, model_desc_for,
)

COST_MODEL_NAMES: dict[str, str] = {
    "parametric": "linear per-stage costs (sim.costs), measured here and fitted by `asyncopd calibrate`",
    "analytic": "roofline from cluster.hardware and the model architectures (sim.analytic)",
}

__all__ = ["BUILTIN_MODELS", "COST_MODEL_NAMES", "ESTIMATORS", "EstimatorSpec", "HARDWARE", "Hardware", "MODELS",
           "ModelConfigError", "ModelDesc", "UnknownHardwareError", "UnknownModelError", "builtin_model_desc", "from_hf_config",
           "get_hardware", "get_model", "model_desc_for"]
