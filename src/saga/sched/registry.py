"""Every named policy, built one way: ``build_policy(name)``."""

from __future__ import annotations

from collections.abc import Callable

from saga.errors import UserError
from saga.sched.baselines import BASELINES
from saga.sched.policy import Policy
from saga.sched.saga import ALL as SAGA_POLICIES
from saga.sched.vllm import VLLMAffinity, VLLMLeastLoaded, VLLMRoundRobin

_FACTORIES: dict[str, Callable[[], Policy]] = {}


def register(name: str, factory: Callable[[], Policy]) -> None:
    """Add a policy under ``name`` (used by baselines, SAGA and plugins)."""
    if name in _FACTORIES:
        raise ValueError(f"policy {name!r} is registered twice")
    _FACTORIES[name] = factory


for _cls in (VLLMRoundRobin, VLLMAffinity, VLLMLeastLoaded, *BASELINES):
    register(_cls.name, _cls)
# a separate loop: mypy joins a homogeneous tuple with the classes above to ``object``
for _saga in SAGA_POLICIES:
    register(_saga.name, _saga)


def list_policies() -> list[str]:
    return sorted(_FACTORIES)


def build_policy(name: str) -> Policy:
    """A fresh policy object (policies hold state: build one per run)."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    return factory()
