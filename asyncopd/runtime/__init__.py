"""The real trainer: Ray actors driven by the shared controller."""
