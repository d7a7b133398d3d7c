"""config layer of fedsim."""
