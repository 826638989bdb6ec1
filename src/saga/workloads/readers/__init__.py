"""Readers that turn public traces into workflows (each streams from a path)."""

from saga.workloads.readers.azure import read_azure
from saga.workloads.readers.claude_code import ClaudeCodeOptions, read_claude_code
from saga.workloads.readers.lmcache import read_lmcache
from saga.workloads.readers.mooncake import read_mooncake

__all__ = ["ClaudeCodeOptions", "read_azure", "read_claude_code", "read_lmcache",
           "read_mooncake"]
