"""Parameter sweeps: a grid of scenario overrides x seeds, run into one directory with an index."""

from fedsim.sweep.runner import *  # noqa: F403  (temporary while the package is split)
from fedsim.sweep.runner import __all__  # noqa: F401
