"""asyncopd: plan, simulate and run asynchronous on-policy distillation.

Importing this package is cheap on purpose: it pulls in neither torch nor ray, so the
simulator (``sim``) can share the config schema, the scheduling controller and the trace
format without dragging the trainer's dependencies along.
"""

__version__ = "0.1.0"
