"""net layer of fedsim."""
