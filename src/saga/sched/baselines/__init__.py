"""The baselines beyond the vLLM routers (docs/baselines.md).

One module per policy; each states its algorithm, parameters and source.
"""

from __future__ import annotations

from saga.sched.baselines.autellix import Autellix, AutellixConfig
from saga.sched.baselines.belady import Belady
from saga.sched.baselines.continuum import Continuum, ContinuumConfig
from saga.sched.baselines.infercept import InferCept, InferCeptConfig
from saga.sched.baselines.kvflow import KVFlow, KVFlowConfig
from saga.sched.baselines.sglang import SGLang, SGLangConfig
from saga.sched.baselines.throughput import Throughput

BASELINES = (SGLang, Autellix, Continuum, InferCept, KVFlow, Belady, Throughput)

__all__ = [
    "BASELINES",
    "Autellix",
    "AutellixConfig",
    "Belady",
    "Continuum",
    "ContinuumConfig",
    "InferCept",
    "InferCeptConfig",
    "KVFlow",
    "KVFlowConfig",
    "SGLang",
    "SGLangConfig",
    "Throughput",
]
