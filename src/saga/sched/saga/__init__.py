"""SAGA's scheduler core (docs/saga.md): Agent Execution Graphs, graph-driven KV
retention, placement with session affinity and work stealing, Agent Fair Share and SLO
admission, composed in :class:`SagaPolicy` and switchable by :class:`SagaConfig`."""

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import ALL, SagaPolicy

__all__ = ["ALL", "SagaConfig", "SagaPolicy"]
