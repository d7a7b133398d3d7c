"""learning layer of fedsim."""
