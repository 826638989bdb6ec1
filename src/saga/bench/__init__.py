"""Benchmarks: scenarios, runner, reports (`saga bench`)."""
