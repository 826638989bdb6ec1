"""``saga ray``'s configuration (the launch itself is tested end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.cli import build_parser
from saga.errors import UserError
from saga.integrations.ray.cli import config_from


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "ray.toml"
    path.write_text('router = "ray-pow2"\nreplicas = 3\ncluster = "test-2"\n')
    args = build_parser().parse_args(["ray", "--config", str(path), "--replicas", "4"])
    config = config_from(args)
    assert (config.router, config.replicas, config.cluster) == ("ray-pow2", 4, "test-2")


def test_a_vllm_engine_needs_its_servers() -> None:
    args = build_parser().parse_args(["ray", "--engine", "vllm"])
    with pytest.raises(UserError, match="vllm_urls"):
        config_from(args)


def test_an_unknown_router_is_refused() -> None:
    args = build_parser().parse_args(["ray", "--router", "nope"])
    with pytest.raises(UserError, match="saga-ray"):
        config_from(args)
