"""vLLM's objects as the vLLM adapter reads them: a request and an engine's queues and pool."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeRequest:
    """The members of vLLM's ``Request`` the view reads."""

    request_id: str
    num_prompt_tokens: int
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    arrival_time: float = 0.0

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens


@dataclass
class FakeEngine:
    """vLLM's queues and block pool (:class:`saga.integrations.vllm_view.VLLMState`)."""

    capacity: int = 4096
    free: int = 4096
    waiting: list[FakeRequest] = field(default_factory=list)
    running: list[FakeRequest] = field(default_factory=list)

    def saga_waiting_requests(self) -> list[FakeRequest]:
        return self.waiting

    def saga_running_requests(self) -> list[FakeRequest]:
        return self.running

    def saga_free_blocks(self) -> int:
        return self.free
