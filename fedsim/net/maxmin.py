"""From-scratch weighted max-min fair rates (progressive filling): the reference solver.

:class:`fedsim.net.flows.FlowSystem` keeps rates up to date incrementally;
this module recomputes them from nothing, for tests and for checking. Source:
D. Bertsekas, R. Gallager, *Data Networks*, 2nd ed., section 6.5.2
(max-min fairness by progressive filling), weighted by each flow's usage
coefficient ``a_lf`` on link ``l`` (``sum_f a_lf r_f <= C_l``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.net.flows import Flow, Link

__all__ = ["maxmin_rates"]

_INF = math.inf
_TIE = 1e-12


def maxmin_rates(
    flows: Sequence[Flow], links: Sequence[Link]
) -> dict[Flow, float]:
    """Weighted max-min fair rates of ``flows`` under the capacities of ``links``.

    Progressive filling: all unfrozen flows grow at the same rate ``t``;
    link ``l`` saturates at ``t_l = (C_l - frozen usage) / sum of a_lf`` over
    its unfrozen flows; the flows on the first saturating links freeze.
    Only ``links`` constrain (others are assumed non-binding). Stalled flows
    get 0.
    """
    rates: dict[Flow, float] = {}
    unfrozen: dict[Flow, None] = {}
    for f in flows:
        if f.stalled:
            rates[f] = 0.0
        else:
            unfrozen[f] = None
    link_set = {id(lk): lk for lk in links}
    residual = {id(lk): lk.capacity for lk in links}
    weight: dict[int, float] = {}
    count: dict[int, int] = {}
    for lk in links:
        w = 0.0
        k = 0
        for f, a in lk.flows.items():
            if f in unfrozen:
                w += a
                k += 1
        if k:
            weight[id(lk)] = w
            count[id(lk)] = k
    while unfrozen:
        best = _INF
        for key, w in weight.items():
            t = residual[key] / w
            if t < best:
                best = t
        if best == _INF:
            break
        best = max(best, 0.0)
        limit = best * (1.0 + _TIE) + 1e-300
        to_freeze: dict[Flow, None] = {}
        for key, w in weight.items():
            if residual[key] / w <= limit:
                for f in link_set[key].flows:
                    if f in unfrozen:
                        to_freeze[f] = None
        for f in to_freeze:
            del unfrozen[f]
            rates[f] = best
            for lk, a in zip(f.path, f.coeffs):
                key = id(lk)
                if key in weight:
                    residual[key] -= a * best
                    k = count[key] - 1
                    if k == 0:
                        del weight[key]
                        del count[key]
                    else:
                        count[key] = k
                        weight[key] -= a
    for f in unfrozen:  # on no constraining link (cannot happen by construction): alone rate
        rates[f] = min((lk.capacity / a for lk, a in zip(f.path, f.coeffs) if a > 0.0),
                       default=0.0)
    return rates
