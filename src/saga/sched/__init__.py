"""The scheduler core: policies that return decisions as data (docs/architecture.md)."""
