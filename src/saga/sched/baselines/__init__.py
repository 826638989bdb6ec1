"""The baselines beyond the vLLM routers (docs/baselines.md).

One module per policy; each states its algorithm, parameters and source.
"""

from __future__ import annotations

from saga.sched.baselines.autellix import Autellix, AutellixConfig
from saga.sched.baselines.belady import Belady
from saga.sched.baselines.continuum import Continuum, ContinuumConfig
from saga.sched.baselines.dynamo import Dynamo, DynamoConfig, DynamoPriority
from saga.sched.baselines.infercept import InferCept, InferCeptConfig
from saga.sched.baselines.kvflow import KVFlow, KVFlowConfig
from saga.sched.baselines.llmd import LLMD, LLMDConfig, LLMDPriority
from saga.sched.baselines.sglang import SGLang, SGLangConfig
from saga.sched.baselines.throughput import Throughput

BASELINES = (
    SGLang, Autellix, Continuum, InferCept, KVFlow, Belady, Throughput, LLMD, LLMDPriority, Dynamo,
    DynamoPriority,
)

__all__ = [
    "BASELINES",
    "LLMD",
    "Autellix",
    "AutellixConfig",
    "Belady",
    "Continuum",
    "ContinuumConfig",
    "Dynamo",
    "DynamoConfig",
    "DynamoPriority",
    "InferCept",
    "InferCeptConfig",
    "KVFlow",
    "KVFlowConfig",
    "LLMDConfig",
    "LLMDPriority",
    "SGLang",
    "SGLangConfig",
    "Throughput",
]
