"""Bridges to real inference engines (vLLM, llama.cpp's server) and the tiny local model.

* :mod:`saga.integrations.tinymodel` builds a seeded random Llama model with a locally trained
  tokenizer, as a Hugging Face folder and as GGUF, so no model hub is needed.
* :mod:`saga.integrations.engines` starts and stops real engine processes and speaks the few
  engine-specific endpoints the backends need (priorities, prefix-cache counters, slots).

* :mod:`saga.integrations.vllm_scheduler` is SAGA's scheduler inside vLLM (its
  ``--scheduler-cls``): Agent Fair Share order and tool-aware KV retention, run by the
  scheduler core in vLLM's own process.

None of them imports torch or an engine when imported (the vLLM scheduler class is built on
first use, in vLLM's process): the engines run in their own virtual environment
(``scripts/engines.sh``, docs/engines.md).
"""
