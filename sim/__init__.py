"""Discrete-event (SimPy) simulator of an async OPD pipeline; drives the shared controller."""
