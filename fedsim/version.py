"""The package version (one place; ``fedsim.__version__`` re-exports it for users)."""

__version__ = "0.1.0"
