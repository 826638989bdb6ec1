"""Synthetic workload generators, by registry name."""

from __future__ import annotations

from saga.workloads.generators.base import Generator, GeneratorParams
from saga.workloads.generators.browser import BrowserAgent, BrowserParams
from saga.workloads.generators.chat import Chat, ChatParams
from saga.workloads.generators.coding import CodingAgent, CodingParams
from saga.workloads.generators.fanout import Fanout, FanoutParams

GENERATORS: dict[str, type[Generator]] = {
    g.name: g for g in (CodingAgent, BrowserAgent, Fanout, Chat)
}

__all__ = [
    "GENERATORS", "BrowserAgent", "BrowserParams", "Chat", "ChatParams", "CodingAgent",
    "CodingParams", "Fanout", "FanoutParams", "Generator", "GeneratorParams",
]
