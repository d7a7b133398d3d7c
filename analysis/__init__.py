"""analysis layer of fedsim."""
