"""SAGA: workflow-atomic scheduling for AI-agent inference on GPU clusters."""

__version__ = "0.1.0"
