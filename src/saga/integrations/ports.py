"""Free loopback ports for the servers SAGA starts (engines, emulators, gateways).

A port is picked at random *outside* the kernel's ephemeral range. Inside it, the port a
check found free can be handed to any outgoing connection (to Redis, to a replica) in the
seconds before the server binds it; a vLLM server binds only after a minute of start-up,
and a gateway restarted in CI once failed with "address already in use" that way. The
kernel never hands out a port below the ephemeral range on its own, so there only another
server picking the same port at random could take it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
#: Linux's ``ip_local_port_range`` default, used where the file cannot be read.
DEFAULT_EPHEMERAL = (32768, 60999)
#: Lowest port picked: below it live well-known and registered services, and Ray's
#: workers take ports in 10002-19999 (its ``min_worker_port``/``max_worker_port``).
LOWEST = 20000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range(path: Path = _RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (inclusive), or :data:`DEFAULT_EPHEMERAL`."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return (low, high) if 0 < low <= high <= 65535 else DEFAULT_EPHEMERAL


def candidate_bases(count: int, ephemeral: tuple[int, int]) -> list[range]:
    """Ranges of first ports whose ``count`` consecutive ports all avoid ``ephemeral``."""
    low, high = ephemeral
    spans = [range(LOWEST, low - count + 1), range(max(LOWEST, high + 1), 65536 - count + 1)]
    return [span for span in spans if len(span) > 0]


def bindable(port: int, host: str = LOOPBACK) -> bool:
    """Whether a listening socket could bind ``port`` on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, host: str = LOOPBACK, rng: random.Random | None = None,
               tries: int = 200) -> int:
    """The first of ``count`` consecutive ports on ``host`` that are free now and lie
    outside the ephemeral range; RuntimeError if ``tries`` random picks find none."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    spans = candidate_bases(count, ephemeral_range())
    if not spans:
        raise RuntimeError(f"no {count} consecutive ports lie outside the ephemeral range")
    pick = rng or random.Random()
    weights = [len(span) for span in spans]
    for _ in range(tries):
        span = pick.choices(spans, weights)[0]
        base = pick.choice(span)
        if all(bindable(base + i, host) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports found in {tries} tries")
