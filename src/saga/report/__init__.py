"""Things people look at: drawings and tables of what a run learned."""
