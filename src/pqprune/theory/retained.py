"""The retained-weight bound of the PQ Index [Diao23, Theorem 2] with the exact η_r of a vector, docs/math.md §4."""

from __future__ import annotations

import torch
from torch import Tensor

from pqprune.measure.indices import check_pq, pq_from_sums, retained_bound
from pqprune.measure.weights import check_mask


# ============================================================================ §4: Theorem 2 with exact η_r
def _sorted_abs(w: Tensor, mask: Tensor | None = None) -> Tensor:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ValueError("w must be a floating-point tensor")
    a = w.detach().reshape(-1).to(torch.float64).abs()
    if mask is not None:
        check_mask("w", mask, w.shape)
        a = a[mask.reshape(-1)]
    if not bool(torch.isfinite(a).all()):
        raise ValueError("w has NaN or infinite entries")
    return torch.sort(a, descending=True).values


def eta_r(w: Tensor, r: int, p: float = 0.5, mask: Tensor | None = None) -> float:
    """The smallest ``η_r`` of [Diao23, Theorem 2]: ``η_r = Σ_{i∉M_r}|w_i|^p / Σ_{i∈M_r}|w_i|^p``.

    ``M_r`` is the set of the ``r`` largest magnitudes (ties do not matter: the sums depend only on the
    sorted magnitudes). ``1 ≤ r ≤ d`` (d = survivors); ``η_d = 0``. Computed in float64.
    """
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}")
    a = _sorted_abs(w, mask)
    d = a.numel()
    if not (isinstance(r, int) and 1 <= r <= d):
        raise ValueError(f"r must be an integer in [1, d={d}], got {r!r}")
    ap = a.pow(p)
    head = float(ap[:r].sum())
    if head <= 0:
        raise ValueError("the r largest magnitudes are all zero: η_r is undefined")
    return float(ap[r:].sum()) / head


def retained_bound_curve(w: Tensor, p: float = 0.5, q: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Theorem-2 lower bound for every ``r = 1 … d`` with the exact ``η_r`` [Diao23, Theorem 2], docs/math.md §4:

        bound(r) = d · (1 + η_r)^{−q/(q−p)} · (1 − I_{p,q}(w))^{qp/(q−p)}  ≤  r.

    Returns a float64 tensor of length d (entry ``r−1`` is the bound at ``r``). The theorem says every entry is
    ``≤ r``; the bound is attained (= k) by an equal-magnitude k-sparse vector at r = k. Uses
    :func:`pqprune.measure.retained_bound` for the formula.
    """
    check_pq(p, q)
    a = _sorted_abs(w, mask)
    d = a.numel()
    if d == 0 or float(a[0]) == 0.0:
        raise ValueError("w has no non-zero surviving entry: the PQ Index is undefined")
    ap = a.pow(p)
    head = torch.cumsum(ap, 0)
    total = head[-1]
    eta = torch.clamp((total - head) / head, min=0.0)  # η_r; +inf where the head is 0 (cannot happen at r≥1)
    index = pq_from_sums(
        torch.tensor([float(d)], dtype=torch.float64), ap.sum().reshape(1), a.pow(q).sum().reshape(1), p, q
    )
    i = float(index[0])
    return d * (1.0 + eta) ** (-q / (q - p)) * (1.0 - i) ** (q * p / (q - p))


def retained_bound_exact(w: Tensor, r: int, p: float = 0.5, q: float = 1.0, mask: Tensor | None = None) -> float:
    """Theorem-2 bound at one ``r`` with the exact ``η_r`` [Diao23, Theorem 2]:

        r ≥ d (1 + η_r)^{−q/(q−p)} (1 − I_{p,q}(w))^{qp/(q−p)},  η_r = Σ_{i∉M_r}|w_i|^p / Σ_{i∈M_r}|w_i|^p.

    Returns the right-hand side (a float ≤ r). See :func:`retained_bound_curve`.
    """
    check_pq(p, q)
    eta = eta_r(w, r, p, mask)
    a = _sorted_abs(w, mask)
    index = pq_from_sums(
        torch.tensor([float(a.numel())], dtype=torch.float64),
        a.pow(p).sum().reshape(1),
        a.pow(q).sum().reshape(1),
        p,
        q,
    )
    return float(retained_bound(float(index[0]), float(a.numel()), p, q, eta))
