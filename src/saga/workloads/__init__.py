"""Workloads: generators and trace readers that all produce workflows (docs/workloads.md).

The registry maps a name to a way of building a :class:`Workload`:

* generators: ``coding-agent``, ``browser-agent``, ``fanout``, ``chat``;
* readers (param ``path=FILE``, default the shared copy): ``claude-code``, ``mooncake``,
  ``azure-code``, ``azure-conv``, ``lmcache-miniswe``, ``lmcache-magagent``,
  ``lmcache-taubench``;
* scenarios: ``agents`` (the small default) and ``interference``.
"""

from saga.workloads.registry import Workload, build_workload, describe, list_workloads

__all__ = ["Workload", "build_workload", "describe", "list_workloads"]
