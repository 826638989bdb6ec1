"""Every named policy, built one way: ``build_policy(name)``.

Any policy but SAGA's own runs behind SAGA's memory gate as ``NAME+gate``
(:mod:`saga.sched.gated`); the online baselines are listed under that name too. Any policy
but SAGA's own, gated or not, runs with SAGA's decode guard as ``NAME+guard``
(:mod:`saga.sched.guarded`; built by name, not listed).
"""

from __future__ import annotations

from collections.abc import Callable

from saga.errors import UserError
from saga.sched.baselines import BASELINES
from saga.sched.baselines.saga_belady import SagaBelady
from saga.sched.baselines.saga_min_eviction import SagaMinEviction
from saga.sched.gated import SUFFIX as GATE_SUFFIX
from saga.sched.gated import gated
from saga.sched.guarded import SUFFIX as GUARD_SUFFIX
from saga.sched.guarded import guarded
from saga.sched.policy import Policy
from saga.sched.saga import ALL as SAGA_POLICIES
from saga.sched.vllm import (
    VLLMAffinity,
    VLLMAffinityPriority,
    VLLMLeastLoaded,
    VLLMLeastLoadedPriority,
    VLLMRoundRobin,
)

_FACTORIES: dict[str, Callable[[], Policy]] = {}


def register(name: str, factory: Callable[[], Policy]) -> None:
    """Add a policy under ``name`` (used by baselines, SAGA and plugins)."""
    if name in _FACTORIES:
        raise ValueError(f"policy {name!r} is registered twice")
    _FACTORIES[name] = factory


_VLLM = (VLLMRoundRobin, VLLMAffinity, VLLMLeastLoaded, VLLMAffinityPriority,
         VLLMLeastLoadedPriority)
for _cls in (*_VLLM, *BASELINES):
    register(_cls.name, _cls)
# a separate loop: mypy joins a homogeneous tuple with the classes above to ``object``
for _saga in SAGA_POLICIES:
    register(_saga.name, _saga)
register(SagaBelady.name, SagaBelady)  # offline: SAGA's scheduling with MIN eviction
# offline: all of SAGA, its retention included, with MIN as the GPU eviction order
register(SagaMinEviction.name, SagaMinEviction)


def _gated_factory(base: str) -> Callable[[], Policy]:
    name = base + GATE_SUFFIX
    return lambda: gated(build_policy(base), name)


# The online baselines behind the gate are listed (any other is built by its name).
for _base in [c.name for c in (*_VLLM, *BASELINES) if not c.offline]:
    register(_base + GATE_SUFFIX, _gated_factory(_base))


def list_policies() -> list[str]:
    return sorted(_FACTORIES)


def build_policy(name: str) -> Policy:
    """A fresh policy object (policies hold state: build one per run)."""
    factory = _FACTORIES.get(name)
    if factory is None and name.endswith(GUARD_SUFFIX):
        base = name.removesuffix(GUARD_SUFFIX)
        if not base.startswith("saga") and not base.endswith(GUARD_SUFFIX):
            inner = build_policy(base)  # an unknown base raises its own UserError
            return guarded(inner, name)
    if factory is None and name.endswith(GATE_SUFFIX):
        base = name.removesuffix(GATE_SUFFIX)
        if base in _FACTORIES and not base.startswith("saga"):
            factory = _gated_factory(base)
    if factory is None:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    return factory()
