"""alignment layer of fedsim."""
