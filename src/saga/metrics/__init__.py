"""Metrics of a run: the summary a simulation or benchmark writes."""
