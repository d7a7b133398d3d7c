"""fedsim: discrete-event simulator of federated Mixture-of-Experts at the wireless edge."""

__version__ = "0.1.0"
