"""The engine model: one replica's mechanics (continuous batching, paged prefix cache, cost)."""
