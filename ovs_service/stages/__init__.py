"""The stages: each saves one kind of state into a snapshot and restores it.

`REGISTRY` names them in the order a restore runs them: port numbers are
pinned before the flows that use them come back, and interfaces after their
bridges. A new stage is a module here (see `base.Stage`) and one line below.
Each is imported when first used: the interfaces stage's netlink library
alone costs a quarter of a second, which a restart's hooks must not pay.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ovs_service.stages.base import Stage

# name: (its class, when a save takes it: "default" when no stage is named,
# "asked" only when named, "with X" whenever X is)
REGISTRY: dict[str, tuple[str, str]] = {
    "datapaths": ("ovs_service.stages.datapaths:DatapathsStage", "default"),
    "flows": ("ovs_service.stages.flows:FlowsStage", "default"),
    "interfaces": ("ovs_service.stages.interfaces:InterfacesStage", "asked"),
    "firewall": ("ovs_service.stages.firewall:FirewallStage", "with interfaces"),
}


def names() -> tuple[str, ...]:
    """Every stage, in the order a restore runs them."""
    return tuple(REGISTRY)


def save_names() -> tuple[str, ...]:
    """What an operator names in a save: the stages no other one brings along."""
    return tuple(n for n, (_, when) in REGISTRY.items() if not when.startswith("with "))


def default_save() -> tuple[str, ...]:
    """What a save takes when no stage is named."""
    return tuple(n for n, (_, when) in REGISTRY.items() if when == "default")


def saved_along(named: Collection[str]) -> list[str]:
    """The stages a save of `named` writes, in registry order."""
    return [n for n, (_, when) in REGISTRY.items()
            if n in named or (when.startswith("with ") and when[5:] in named)]


@cache
def stage(name: str) -> Stage:
    """The stage called `name` (one of NAMES), imported on first use."""
    module, _, cls = REGISTRY[name][0].partition(":")
    made: Stage = getattr(importlib.import_module(module), cls)()
    return made
