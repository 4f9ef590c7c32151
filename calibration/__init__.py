"""Calibration of the simulator's cost models."""
