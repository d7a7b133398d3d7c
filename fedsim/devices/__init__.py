"""devices layer of fedsim."""
