"""Distributions fitted to real traces, as quantile knots at ``quantiles.KNOT_PROBS``.

Generators sample log-linearly between knots (:func:`saga.workloads.quantiles.quantile_sample`).

Claude Code: fitted by ``python -m saga.workloads.fit`` on ``claude_code_sessions.jsonl.gz``
(710 sessions, 49,334 calls) on 2026-11-23. ``ks`` is the Kolmogorov-Smirnov distance of the
knot model to the data (a maximum-likelihood log-normal is given for comparison).
"""

from __future__ import annotations

# Calls per session (main + sub-agents). ks 0.037 (log-normal 0.060), n 710.
CC_CALLS = (3.0, 4.0, 7.0, 18.0, 45.5, 94.0, 157.3, 233.1, 340.9, 561.0)
# First main prompt less tools+system tokens. ks 0.091 (log-normal 0.151), n 710. Bimodal:
# fresh sessions (a few k) and resumed ones (100k+).
CC_FIRST_PROMPT = (111.0, 521.2, 1438.2, 3653.2, 7214.0, 89262.0, 246092.0, 362399.5,
                   693441.7, 837120.0)
# Tool schemas + system prompt per session. ks 0.112 (log-normal 0.229), n 710.
CC_SYSTEM = (4210.0, 10068.4, 11897.9, 12900.8, 14948.0, 15457.2, 15930.0, 16799.0, 21130.6,
             23081.0)
# Tokens a prompt adds over the same agent's previous prompt (includes the previous output).
# ks 0.040 (log-normal 0.054), n 48,139.
CC_GROWTH = (6.0, 155.0, 193.0, 333.0, 663.0, 1582.0, 3640.0, 6398.1, 16871.7, 636943.0)
# Output tokens per call. ks 0.038 (log-normal 0.084), n 49,334.
CC_OUTPUT = (1.0, 89.0, 105.0, 137.0, 216.0, 426.0, 898.0, 1554.0, 3686.3, 18195.0)
# Tool time (s) before a call following a tool result; the trace has 1 s resolution, hence
# the larger ks. ks 0.089 (log-normal 0.151), n 41,942.
CC_TOOL_GAP = (1.0, 3.0, 4.0, 5.0, 9.0, 19.0, 73.0, 168.0, 920.1, 77589.0)
# Human think time (s) before a call following a user message. ks 0.022 (log-normal 0.030).
CC_HUMAN_GAP = (1.0, 9.0, 16.0, 40.0, 127.0, 409.0, 1541.2, 3087.7, 6854.0, 72013.0)
# Share of non-first calls that follow a human message, and that compact the context.
CC_P_HUMAN = 0.1336
CC_P_COMPACT = 0.0041

# Azure LLM inference 2023, conversation (azure_llm_2023_conv.csv.gz, 19,366 requests),
# quantiles computed on 2026-11-23 (same knot probabilities).
AZ_CONV_PROMPT = (2.0, 181.0, 207.0, 396.0, 1020.0, 1189.0, 2734.0, 4083.0, 4142.0, 14050.0)
AZ_CONV_OUTPUT = (7.0, 41.0, 54.0, 85.0, 129.0, 395.0, 424.0, 451.0, 601.0, 1000.0)
