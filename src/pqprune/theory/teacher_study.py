"""The teacher experiment of [Yang22], docs/math.md §7: a random ReLU teacher whose rows have controlled soft
sparsity is pruned directly by the l_q bound rule, the l_q index rule, SAP [Diao23] and magnitude pruning, each
through the engine (:class:`pqprune.prune.pruner.Pruner`); for each result the number of weights kept and the
output error ``|F(x) − F'(x)|`` over test inputs of the box ``‖x‖_∞ ≤ B``, beside magnitude pruning at the same
per-layer counts. :func:`plot_teacher` draws them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pqprune.experiment.data.builtin import TEACHER_DISTS, make_teacher
from pqprune.files import FileFormat
from pqprune.measure.indices import check_lq
from pqprune.measure.weights import Masks, Scope
from pqprune.plotting import new_figure, save_png, series_colors
from pqprune.prune.methods.base import Counts, Method, Plan, Weights
from pqprune.prune.methods.lq import LqNeuron, check_input_bound
from pqprune.prune.methods.magnitude import OneShot
from pqprune.prune.methods.sap import SAP
from pqprune.prune.pruner import Pruner
from pqprune.prune.select import magnitude_scores
from pqprune.theory.lq_bounds import lq_network_bound
from pqprune.theory.mc_study import _check_choice, _check_eps_values, _check_positive_ints

# ============================================================================ teacher study [Yang22]
TEACHER_METHODS = ("lq_bound", "lq_index", "sap", "magnitude")


@dataclass(frozen=True)
class TeacherPoint:
    """One pruned teacher: ``method`` at hyper-parameter ``param = value``.

    ``kept``/``total`` count prunable weights. Errors over the test inputs (``‖x‖_∞ ≤ B``): ``max_err`` =
    ``max_{x, k}|F_k(x) − F'_k(x)|``, ``mean_err`` = the mean of ``|F_k(x) − F'_k(x)|`` over inputs and outputs,
    ``max_err_l2`` = ``max_x ‖F(x) − F'(x)‖₂``. ``bound`` / ``bound_tail`` (bound rule only): the rule's
    guaranteed ``sup_{‖x‖_∞≤B}‖F(x) − F'(x)‖₂`` from the ℓ_q per-neuron bounds and from the exact per-neuron
    tails (:func:`pqprune.theory.lq_network_bound`). ``mag_*``: magnitude pruning of each layer to the same
    per-layer counts (the equal-count comparison; for the magnitude curve itself, its own values).
    """

    dist: str
    method: str
    param: str
    value: float
    kept: int
    total: int
    max_err: float
    mean_err: float
    max_err_l2: float
    mag_max_err: float
    mag_mean_err: float
    bound: float | None = None
    bound_tail: float | None = None

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total

    @property
    def looseness(self) -> float | None:
        """``bound / max_err_l2``: how many times the largest observed ℓ₂ change the bound rule guarantees (None if
        not the bound rule or nothing changed)."""
        if self.bound is None or self.max_err_l2 <= 0:
            return None
        return self.bound / self.max_err_l2

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_fraction": self.kept_fraction, "looseness": self.looseness}


@dataclass
class TeacherStudy:
    """Result of :func:`teacher_study`: the points of every method and the settings that made them."""

    points: list[TeacherPoint]
    settings: dict[str, Any]
    seconds: float

    def by_method(self, method: str) -> list[TeacherPoint]:
        return sorted((p for p in self.points if p.method == method), key=lambda p: p.kept)

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "seconds": self.seconds, "points": [p.as_dict() for p in self.points]}


class _MagnitudeAtCounts(Method):
    """Keep, in each layer, the ``keep[name]`` largest magnitudes (layer scope): magnitude pruning at the per-layer
    counts another method chose — the equal-count control. Not registered; used by :func:`teacher_study`."""

    name = "magnitude_at_counts"
    default_scope = "layer"

    def __init__(self, keep: Mapping[str, int]):
        self.keep = {n: int(k) for n, k in keep.items()}

    def hparams(self) -> dict[str, Any]:
        return {"keep": dict(self.keep)}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        if scope != "layer":
            raise ValueError("magnitude_at_counts works at layer scope")
        counts: Counts = {}
        for n, w in weights.items():
            m = masks.get(n)
            alive = int(m.sum()) if m is not None else w.numel()
            counts[n] = max(0, alive - self.keep[n])
        return Plan(counts, magnitude_scores(weights), [])


def box_test_inputs(dim: int, n: int, input_bound: float, generator: torch.Generator) -> Tensor:
    """Test inputs of the box ``‖x‖_∞ ≤ B``: ``n`` uniform points and ``n`` random corners ``±B`` (float64).

    Corners matter: the worst case of a linear map over the box is attained at one (``sign`` of the row).
    """
    uniform = (torch.rand(n, dim, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * input_bound
    corners = (torch.randint(0, 2, (n, dim), generator=generator).to(torch.float64) * 2.0 - 1.0) * input_bound
    return torch.cat([uniform, corners])


def _prune(model: nn.Module, method: Method, scope: str) -> tuple[nn.Module, dict[str, Tensor]]:
    """One pruning step of the engine on a copy of ``model``; returns the pruned copy and its masks."""
    import copy

    pruned = copy.deepcopy(model)
    pruner = Pruner(pruned, method, scope=scope)
    pruner.step()
    return pruned, pruner.masks


def _errors(dense_out: Tensor, model: nn.Module, x: Tensor) -> tuple[float, float, float, Tensor]:
    with torch.no_grad():
        diff = (dense_out - model(x)).abs()
    l2 = diff.norm(dim=1)
    return float(diff.max()), float(diff.mean()), float(l2.max()), l2


def teacher_study(
    dist: str = "cauchy",
    *,
    input_dim: int = 128,
    hidden: Sequence[int] = (256,),
    output_dim: int = 4,
    df: float = 3.0,
    c: float = 1.0,
    seed: int = 0,
    q: float = 0.5,
    input_bound: float = 1.0,
    bound_eps: Sequence[float] = (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0),
    index_gammas: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
    sap_gammas: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    densities: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.7, 0.85),
    beta: float = 0.99,
    sap_scope: str = "layer",
    n_test: int = 2048,
    methods: Sequence[str] = TEACHER_METHODS,
) -> TeacherStudy:
    """Prune a teacher with controlled soft sparsity by each method; weights kept vs output error [Yang22], docs/math.md §7.

    **Teacher** (:func:`pqprune.experiment.data.make_teacher`): ``x ↦ W_L relu(… relu(W_1 x))``, no biases, entries of each
    row i.i.d. Normal, Student-t(``df``) or Cauchy, rows scaled to ``‖w_i‖₁ = 1/c``. Heavier tails → a few large
    entries dominate each row → smaller ``‖w_i‖_q`` for the same ℓ₁ norm → fewer weights needed. No training: pruning
    the teacher directly *is* the sparse-approximation problem of [Yang22] (how well can an ``m``-sparse network
    represent F).

    **Methods** (each one pruning step of :class:`pqprune.prune.pruner.Pruner`, ε/γ/ρ swept to trace a curve):

    * ``lq_bound`` — ``LqNeuron(rule="bound", relative=True)``: neuron i of layer l keeps
      ``m_i = min(d_i, ceil((B_l‖w_i‖_q/ε_i)^{q/(1−q)}))`` with ``ε_i = ε·B_l·‖w_i‖₁`` and the input bound ``B_l`` of
      layer l propagated through the pruned layers before it (:func:`pqprune.theory.lq_network_bound`, whose masks
      the engine reproduces). Guarantee: ``‖F(x) − F'(x)‖₂ ≤ bound`` on the whole box. Since
      ``‖w‖_q/‖w‖₁ = d^{1/q−1}/SI_q``, the kept fraction is ``(ε·SI_q(w_i))^{−q/(1−q)}``: the rule prunes only once
      ``ε > 1/SI_q`` (heavy-tailed rows have a large ``SI_q``), and ``ε ≥ 1`` tolerates a per-neuron change as large
      as the trivial bound ``B‖w_i‖₁``.
    * ``lq_index`` — ``LqNeuron(rule="index", η=0)`` per neuron: retained fraction
      ``m/d = SI_q^{−q/(1−q)}``, pruned fraction ``min(γ(1 − m/d), β)`` (docs/math.md §7). At γ = 1 this is the bound
      rule at ε = 1 (same counts up to rounding): the index rule's "guarantee" is the trivial one.
    * ``sap`` — ``SAP(p=0.5, q=1, γ, β)`` at ``sap_scope``. (At neuron scope SAP(0.5, 1) *is* the index rule with
      q = 0.5, so the default compares it at layer scope.)
    * ``magnitude`` — ``OneShot(target_density=ρ)`` at layer scope: every layer keeps ``ceil(ρ·D_l)`` largest.

    Every point of every method is also compared with magnitude pruning at the *same per-layer counts*
    (``mag_max_err``, ``mag_mean_err``), which separates how a method allocates weights across neurons from how many
    it keeps per layer.

    **Errors** over ``2·n_test`` inputs of the box ``‖x‖_∞ ≤ B`` (uniform and corners, :func:`box_test_inputs`),
    computed in float64.
    """
    if dist not in TEACHER_DISTS:
        raise ValueError(f"dist must be one of {', '.join(TEACHER_DISTS)}, got {dist!r}")
    check_lq(q)
    _check_choice("methods", methods, TEACHER_METHODS)
    check_input_bound(input_bound)
    if input_bound == 0:
        raise ValueError("input_bound must be > 0: the test inputs fill the box |x| <= input_bound")
    _check_eps_values("bound_eps", bound_eps)
    _check_eps_values("index_gammas", index_gammas)
    _check_eps_values("sap_gammas", sap_gammas)
    for rho in densities:
        if not (isinstance(rho, (int, float)) and 0 < rho <= 1):
            raise ValueError(f"densities must be in (0, 1], got {rho!r}")
    _check_positive_ints("n_test", [n_test])
    start = time.perf_counter()
    teacher = make_teacher(input_dim, tuple(hidden), output_dim, dist, df, c, seed)
    model = teacher.as_module().to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    x = box_test_inputs(input_dim, n_test, float(input_bound), gen)
    with torch.no_grad():
        dense_out = model(x)
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    total = sum(p.numel() for n, p in model.named_parameters() if n in names)

    def point(
        method_name: str,
        param: str,
        value: float,
        method: Method,
        scope: str,
        bound: float | None = None,
        bound_tail: float | None = None,
    ) -> TeacherPoint:
        pruned, masks = _prune(model, method, scope)
        mx, mean, mx2, _ = _errors(dense_out, pruned, x)
        keep = {n: int(m.sum()) for n, m in masks.items()}
        if method_name == "magnitude":
            mag = (mx, mean)
        else:
            mag_model, _ = _prune(model, _MagnitudeAtCounts(keep), "layer")
            mag = _errors(dense_out, mag_model, x)[:2]
        return TeacherPoint(
            dist,
            method_name,
            param,
            float(value),
            sum(keep.values()),
            total,
            mx,
            mean,
            mx2,
            mag[0],
            mag[1],
            bound,
            bound_tail,
        )

    points: list[TeacherPoint] = []
    if "lq_bound" in methods:
        for e in bound_eps:
            nb = lq_network_bound(model, q, float(e), input_bound=float(input_bound), relative=True)
            method = LqNeuron(
                q=q,
                rule="bound",
                eps=float(e),
                relative=True,
                input_bound={lb.name: lb.input_bound for lb in nb.layers},
            )
            points.append(point("lq_bound", "eps", e, method, "neuron", nb.output_bound, nb.output_bound_tail))
    if "lq_index" in methods:
        for g in index_gammas:
            points.append(
                point("lq_index", "gamma", g, LqNeuron(q=q, rule="index", gamma=float(g), beta=beta), "neuron")
            )
    if "sap" in methods:
        for g in sap_gammas:
            points.append(point("sap", "gamma", g, SAP(0.5, 1.0, gamma=float(g), beta=beta), sap_scope))
    if "magnitude" in methods:
        for rho in densities:
            points.append(point("magnitude", "density", rho, OneShot(target_density=float(rho)), "layer"))
    settings = {
        "dist": dist,
        "input_dim": input_dim,
        "hidden": list(hidden),
        "output_dim": output_dim,
        "df": df,
        "c": c,
        "seed": seed,
        "q": q,
        "input_bound": input_bound,
        "beta": beta,
        "sap_scope": sap_scope,
        "n_test": n_test,
    }
    return TeacherStudy(points, settings, time.perf_counter() - start)


def teacher_studies(dists: Iterable[str] = TEACHER_DISTS, **kwargs: Any) -> list[TeacherStudy]:
    """:func:`teacher_study` for each teacher distribution (same sizes, seed and sweeps).

    Every distribution is checked before any teacher is pruned, so a bad name fails at once."""
    dists = list(dists)
    _check_choice("dists", dists, TEACHER_DISTS)
    return [teacher_study(d, **kwargs) for d in dists]


TEACHER_STUDY = FileFormat("pqprune.theory_teacher", 1, "teacher study")  # theory_teacher.json (0.1.0: a bare list)


def save_teacher(studies: Sequence[TeacherStudy], path: str | Path) -> Path:
    """Write teacher studies as a JSON document (``{"studies": [...]}``, :meth:`TeacherStudy.as_dict`), atomically."""
    return TEACHER_STUDY.save_json({"studies": [s.as_dict() for s in studies]}, path)


def load_teacher(path: str | Path) -> list[dict[str, Any]]:
    """The studies (as dicts) of a file of :func:`save_teacher`; a foreign or newer file raises ``FileFormatError``."""
    return list(TEACHER_STUDY.read_json(path).get("studies") or [])


_METHOD_STYLE = {
    "lq_bound": ("ℓ_q bound rule", "o"),
    "lq_index": ("ℓ_q index rule", "s"),
    "sap": ("SAP (0.5, 1)", "^"),
    "magnitude": ("magnitude (uniform ρ)", "D"),
}


def plot_teacher(studies: Sequence[TeacherStudy], path: str | Path) -> Path:
    """Weights kept vs max and mean output error (log–log), one column per teacher distribution.

    Solid: each method; dotted, same colour: magnitude pruning at that method's per-layer counts; dashed: the
    bound rule's guaranteed ℓ₂ bound (from the exact tails). Writes a PNG.
    """
    from matplotlib.ticker import NullFormatter

    if not studies:
        raise ValueError("no studies to plot")
    colors = dict(zip(TEACHER_METHODS, series_colors(len(TEACHER_METHODS))))
    fig, axes = new_figure(2, len(studies), figsize=(4.3 * len(studies), 6.4))
    for col, st in enumerate(studies):
        for row, (attr, mag_attr, label) in enumerate(
            (("max_err", "mag_max_err", "max |F − F'|"), ("mean_err", "mag_mean_err", "mean |F − F'|"))
        ):
            ax = axes[row][col]
            for m in TEACHER_METHODS:
                pts = [p for p in st.by_method(m) if getattr(p, attr) > 0]
                if not pts:
                    continue
                name, marker = _METHOD_STYLE[m]
                ax.plot(
                    [p.kept for p in pts], [getattr(p, attr) for p in pts], marker=marker, color=colors[m], label=name
                )
                if m != "magnitude":
                    ax.plot(
                        [p.kept for p in pts],
                        [getattr(p, mag_attr) for p in pts],
                        ":",
                        marker=marker,
                        mfc="none",
                        color=colors[m],
                        label=f"magnitude at {name} counts",
                    )
                if m == "lq_bound" and row == 0:
                    bpts = [p for p in pts if p.bound_tail]
                    ax.plot(
                        [p.kept for p in bpts],
                        [p.bound for p in bpts],
                        "--",
                        color=colors[m],
                        label="bound rule: its guaranteed ℓ₂ bound (ℓ_q)",
                    )
                    ax.plot(
                        [p.kept for p in bpts],
                        [p.bound_tail for p in bpts],
                        "-.",
                        color=colors[m],
                        label="bound rule: guaranteed bound from exact tails",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("weights kept")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3, which="both")
            ax.set_title(
                f"{st.settings['dist']} teacher {st.settings['input_dim']}-"
                f"{'-'.join(map(str, st.settings['hidden']))}-{st.settings['output_dim']}",
                fontsize=10,
            )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_png(fig, path, dpi=120)
