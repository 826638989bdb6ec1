"""The scheduler core: policies that return decisions as data (DESIGN.md section 3)."""
