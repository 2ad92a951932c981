"""Environment registry: namespaced ids, the part after the colon exactly as the package names it.

    navix:Navix-DoorKey-8x8-v0      xminigrid:MiniGrid-DoorKey-8x8      gymnax:CartPole-v1
    gym:MiniGrid-DoorKey-8x8-v0     gym:NetHackScore-v0                 gym:MiniHack-Room-5x5-v0
    grid:KeyCorridorS3R3

`grid:` ids are autotelic's own pure-JAX ports of MiniGrid tasks (`autotelic.envs.keycorridor`).

`make(env_id, **options)` returns an adapter that fulfils `autotelic.envs.base.JaxEnv`, except for
`gym:` ids: those are Gymnasium envs stepped in worker processes (`autotelic.envs.host.HostEnv`;
training drives them through `autotelic.host_driver`). A `gym:` id may name a module to import
first, as `gymnasium.make` allows: `gym:my.module:MyEnv-v0`.
Short aliases (`doorkey-8x8`, ...) map to full ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError, unknown
from .base import EnvSpec, JaxEnv, StepResult

__all__ = ["ALIASES", "NAMESPACES", "EnvSpec", "JaxEnv", "StepResult", "list_envs", "make"]


def _navix(name: str, options: dict[str, Any]) -> JaxEnv:
    from .navix_env import NavixEnv

    return NavixEnv(name, **options)


def _navix_ids() -> list[str]:
    from .navix_env import navix_ids

    return navix_ids()


def _xminigrid(name: str, options: dict[str, Any]) -> JaxEnv:
    from .xminigrid_env import XMiniGridEnv

    return XMiniGridEnv(name, **options)


def _xminigrid_ids() -> list[str]:
    from .xminigrid_env import xminigrid_ids

    return xminigrid_ids()


def _gymnax(name: str, options: dict[str, Any]) -> JaxEnv:
    from .gymnax_env import GymnaxEnv

    return GymnaxEnv(name, **options)


def _gymnax_ids() -> list[str]:
    from .gymnax_env import gymnax_ids

    return gymnax_ids()


def _grid(name: str, options: dict[str, Any]) -> JaxEnv:
    from .keycorridor import KeyCorridorEnv

    return KeyCorridorEnv(name, **options)


def _grid_ids() -> list[str]:
    from .keycorridor import keycorridor_ids

    return keycorridor_ids()


def _gym(name: str, options: dict[str, Any]) -> JaxEnv:
    from .host import HostEnv

    env = HostEnv(name, **options)
    env.spec  # noqa: B018 (builds one env here: a bad id or space fails before training starts)
    return env


def _gym_ids() -> list[str]:
    from .host import gym_ids

    return gym_ids()


# namespace -> (constructor, list of ids, one-line description of the semantics)
NAMESPACES: dict[str, tuple[Callable[..., JaxEnv], Callable[[], list[str]], str]] = {
    "navix": (
        _navix,
        _navix_ids,
        "MiniGrid reward 1-0.9*t/T and MiniGrid horizon by default; "
        "semantics=navix for navix.make's raw reward 1 and horizon",
    ),
    "xminigrid": (
        _xminigrid,
        _xminigrid_ids,
        "reward 1-0.9*t/T; xminigrid's own horizon and egocentric view per task",
    ),
    "gymnax": (_gymnax, _gymnax_ids, "gymnax defaults (classic control, MinAtar, bsuite, misc)"),
    "grid": (
        _grid,
        _grid_ids,
        "autotelic's own JAX port of MiniGrid's KeyCorridor: stock layouts and dynamics, "
        "reward 1-0.9*t/T, T=30*S^2; MiniGrid's 7x7 occluded view by default, "
        "observation=symbolic for the full grid",
    ),
    "gym": (
        _gym,
        _gym_ids,
        "Gymnasium envs stepped in worker processes (host path, slower than the JAX-native "
        "namespaces); Discrete actions; MiniGrid 7x7 view, NetHack/MiniHack glyph crop + blstats",
    ),
}

# namespace -> the PyPI package it needs, where the names differ
PACKAGES = {"gym": "gymnasium"}

ALIASES: dict[str, str] = {
    "doorkey-5x5": "navix:Navix-DoorKey-5x5-v0",
    "doorkey-6x6": "navix:Navix-DoorKey-6x6-v0",
    "doorkey-8x8": "navix:Navix-DoorKey-8x8-v0",
    "doorkey-16x16": "navix:Navix-DoorKey-16x16-v0",
    "keycorridor-s3r3": "grid:KeyCorridorS3R3",
    "fourrooms": "navix:Navix-FourRooms-v0",
    "empty-8x8": "navix:Navix-Empty-8x8-v0",
}


def list_envs() -> dict[str, list[str]]:
    """Every id autotelic can make, grouped by namespace (a namespace whose package is missing
    lists nothing)."""
    listing: dict[str, list[str]] = {}
    for namespace, (_, ids, _) in NAMESPACES.items():
        try:
            listing[namespace] = [f"{namespace}:{name}" for name in ids()]
        except ImportError:
            listing[namespace] = []
    return listing


def resolve(env_id: str) -> str:
    """Full namespaced id for an id or alias; a `UserError` listing close matches otherwise."""
    if env_id in ALIASES:
        return ALIASES[env_id]
    if ":" not in env_id:
        every = [i for ids in list_envs().values() for i in ids] + list(ALIASES)
        exact = [i for i in every if i.split(":", 1)[-1] == env_id]
        hint = "Ids are namespaced, e.g. navix:Navix-DoorKey-8x8-v0; `autotelic envs` lists them."
        if len(exact) == 1:
            raise UserError(f"environment id {env_id!r} needs its namespace: use {exact[0]!r}.")
        raise unknown("environment", env_id, every, hint)
    namespace, name = env_id.split(":", 1)
    if namespace not in NAMESPACES:
        raise unknown("environment namespace", namespace, NAMESPACES)
    _, ids, _ = NAMESPACES[namespace]
    try:
        known = ids()
    except ImportError as error:
        raise UserError(
            f"environment {env_id!r} needs the {namespace!r} package, which is not installed "
            f"({error}). Install it with `pip install {PACKAGES.get(namespace, namespace)}`."
        ) from None
    if name not in known and not (namespace == "gym" and ":" in name):
        full = [f"{namespace}:{i}" for i in known]
        raise unknown("environment", env_id, full, "`autotelic envs` lists every available id.")
    return env_id


def make(env_id: str, **options: Any) -> JaxEnv:
    """The adapter for `env_id` (namespaced id or alias) with adapter `options`."""
    full = resolve(env_id)
    namespace, name = full.split(":", 1)
    constructor, _, _ = NAMESPACES[namespace]
    try:
        return constructor(name, dict(options))
    except TypeError as error:
        raise UserError(f"bad option for environment {full!r}: {error}") from None
