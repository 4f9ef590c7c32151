"""The pure-Python scheduling controller shared by the simulator and the trainer.

Imports nothing heavier than the standard library: no torch, ray or simpy.
"""

from asyncopd.control.controller import Controller, ControllerDeadlock, Observer
from asyncopd.control.messages import *  # noqa: F401,F403
from asyncopd.control.policies import (
    POLICIES, FullyAsyncPolicy, Policy, StepOffPolicy, SyncPolicy, parse_policy, policy_from, register_policy,
)

__all__ = ["Controller", "ControllerDeadlock", "Observer", "POLICIES", "Policy", "SyncPolicy", "StepOffPolicy",
           "FullyAsyncPolicy", "parse_policy", "policy_from", "register_policy"]
