"""fedsim: discrete-event simulator of federated Mixture-of-Experts at the wireless edge."""

from fedsim.version import __version__

__all__ = ["__version__", "load_scenario", "run", "RunResult", "ScenarioError"]


def __getattr__(name: str):  # lazy: importing fedsim stays cheap and side-effect free
    if name in ("load_scenario", "run", "RunResult"):
        from fedsim import api

        return getattr(api, name)
    if name == "ScenarioError":
        from fedsim.config.errors import ScenarioError

        return ScenarioError
    raise AttributeError(name)
