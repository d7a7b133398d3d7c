"""protocols layer of fedsim."""
