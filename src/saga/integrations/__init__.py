"""Bridges to real inference engines (vLLM, llama.cpp's server) and the tiny local model.

* :mod:`saga.integrations.tinymodel` builds a seeded random Llama model with a locally trained
  tokenizer, as a Hugging Face folder and as GGUF, so no model hub is needed.
* :mod:`saga.integrations.engines` starts and stops real engine processes and speaks the few
  engine-specific endpoints the backends need (priorities, prefix-cache counters, slots).

Neither module imports torch or an engine: the engines run in their own virtual environment
(``scripts/engines.sh``, docs/engines.md).
"""
