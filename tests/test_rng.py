"""One root seed, named independent streams, and no global RNG anywhere in fedsim/."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from fedsim.rng import RngStreams

SRC = Path(__file__).resolve().parents[1] / "fedsim"

GLOBAL_RNG = re.compile(
    r"(^|[^.\w])(random\.seed|np\.random\.seed|numpy\.random\.seed|torch\.manual_seed|torch\.cuda\.manual_seed)\("
    r"|np\.random\.(rand|randn|randint|random|choice|normal|uniform|shuffle|permutation|exponential|poisson|lognormal|dirichlet|binomial)\("
    r"|numpy\.random\.(rand|randn|randint|random|choice|normal|uniform|shuffle|permutation)\("
    r"|(^|[^.\w])random\.(random|randint|choice|shuffle|uniform|gauss)\("
    r"|torch\.(rand|randn|randint|randperm|normal|bernoulli|multinomial)\((?!.*generator=)"
    r"|default_rng\(\s*\)"
)


def test_streams_are_reproducible_and_independent_of_order() -> None:
    a, b = RngStreams(7), RngStreams(7)
    a.numpy("x")  # touching another stream first must not change "channel"
    assert np.array_equal(a.numpy("channel").random(5), b.numpy("channel").random(5))
    assert not np.array_equal(RngStreams(7).numpy("channel").random(5), RngStreams(8).numpy("channel").random(5))
    assert not np.array_equal(RngStreams(7).numpy("a").random(5), RngStreams(7).numpy("b").random(5))


def test_shared_vs_fresh_streams() -> None:
    r = RngStreams(1)
    x1, x2 = r.numpy("s").random(), r.numpy("s").random()
    assert x1 != x2  # the shared stream advances
    assert r.fresh_numpy("t").random() == r.fresh_numpy("t").random()
    g1, g2 = r.torch("job"), r.torch("job")
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_no_global_rng_in_source() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if GLOBAL_RNG.search(code):
                offenders.append(f"{path.relative_to(SRC.parent)}:{i}: {line.strip()}")
    assert not offenders, "global RNG use:\n" + "\n".join(offenders)


def test_checker_catches_violations() -> None:
    for bad in ("np.random.seed(0)", "x = np.random.normal(0, 1)", "torch.manual_seed(3)", "random.seed(1)", "t = torch.randn(3)", "g = np.random.default_rng()"):
        assert GLOBAL_RNG.search(bad), bad
    for ok in ("rng.normal(0, 1)", "np.random.default_rng(seq)", "torch.randn(3, generator=g)", "torch.randint(0, 5, (n,), generator=g)", "self.rng.choice(5)"):
        assert not GLOBAL_RNG.search(ok), ok
