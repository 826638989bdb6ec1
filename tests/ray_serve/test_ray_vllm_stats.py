"""What a replica fronting vLLM reports to the routers, from vLLM's ``/metrics``."""

from __future__ import annotations

from saga.integrations.ray.vllm import parse_vllm_metrics

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1234.0
"""
LAYOUT = 'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="800"} 1.0\n'


def test_queue_and_kv_usage_are_read_from_vllm_gauges() -> None:
    stats = parse_vllm_metrics(METRICS, capacity_blocks=400)
    assert (stats.running, stats.waiting) == (3, 5)
    assert (stats.kv_capacity_blocks, stats.kv_used_blocks) == (400, 100)


def test_a_page_without_the_gauges_reports_nothing() -> None:
    stats = parse_vllm_metrics("# nothing here\nother_metric 1\n", capacity_blocks=10)
    assert (stats.running, stats.waiting, stats.kv_used_blocks) == (0, 0, 0)


def test_the_kv_size_is_vllms_own_when_it_publishes_its_cache_layout() -> None:
    # 800 blocks of 16 tokens = 200 blocks of the router's 64
    stats = parse_vllm_metrics(METRICS + LAYOUT, capacity_blocks=400, block_tokens=64)
    assert (stats.kv_capacity_blocks, stats.kv_used_blocks) == (200, 50)
