"""Reward sources. Each module registers itself; see `autotelic.rewards.base` for the protocol."""

from . import base
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register

__all__ = ["HeadConfig", "RewardSource", "SourceEntry", "Transition", "base", "register"]
