"""Reward sources, one module each; every module registers itself on import.

See `autotelic.rewards.base` for the protocol. Adding a source is adding a module here.
"""

import importlib
import pkgutil

from . import base
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["HeadConfig", "RewardSource", "SourceEntry", "Transition", "base", "register"]
