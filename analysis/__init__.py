"""analysis layer of fedsim: figures and tables from saved run directories.

Reads run directories only (never simulator internals) and imports nothing
heavy at import time; matplotlib is imported inside the plotting functions.

- :mod:`analysis.rundir`: :class:`~analysis.rundir.RunDir`, a lazy loader of a run directory.
- :mod:`analysis.plots`: per-run figures; :func:`~analysis.plots.plot_run` writes them all.
- :mod:`analysis.compare`: multi-run comparison, sweep-cell confidence intervals.
- :mod:`analysis.info`: key/value run summary for ``fedsim info``.
"""
