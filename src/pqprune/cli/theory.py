"""``pqprune bound`` and ``pqprune theory mc|teacher``: the theory of docs/math.md §7–§8."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from pqprune.cli.app import CONTEXT, DB_HELP, _csv_values, app, err_console, fail
from pqprune.cli.sources import (
    EXCLUDE_HELP,
    INCLUDE_HELP,
    MASKS_HELP,
    ROUND_HELP,
    SOURCE_HELP,
    open_checkpoint,
    selected_names,
)
from pqprune.cli.tables import _g, _print_rows, _text_table
from pqprune.files import MISSING
from pqprune.theory.gap_bound import RandomNetSpec, guaranteed_probability, hp_gap_bound, random_matrix_norm_bound
from pqprune.theory.lq_bounds import lq_layer_bound, lq_network_bound
from pqprune.theory.moments import magnitude_moment_normal, magnitude_moment_uniform, magnitude_threshold, random_moment

# Commands are added below, one section per command family.


# --------------------------------------------------------------------------------------------- bound (theory)
@app.command("bound")
def bound_command(
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="ℓ_q bound per layer of a checkpoint (exact zeros and masked weights count as pruned). " + SOURCE_HELP,
    ),
    masks: str | None = typer.Option(None, "--masks", help="Checkpoint mode: " + MASKS_HELP),
    round_: int | None = typer.Option(None, "--round", help="Checkpoint mode: " + ROUND_HELP),
    include: list[str] | None = typer.Option(None, "--include", metavar="PATTERN", help=INCLUDE_HELP),
    exclude: list[str] | None = typer.Option(None, "--exclude", metavar="PATTERN", help=EXCLUDE_HELP),
    eps: float | None = typer.Option(
        None, "--eps", help="Tolerance ε (gap on the unit ball, or ℓ_q per-neuron tolerance)."
    ),
    delta: float | None = typer.Option(
        None, "--delta", help="Failure probability δ: print the gap bound holding w.p. 1−δ."
    ),
    input_bound: float = typer.Option(1.0, "--input-bound", help="Checkpoint mode: inputs satisfy |x_j| ≤ B."),
    q: float = typer.Option(0.5, "--q", help="Checkpoint mode: ℓ_q exponent, 0 < q < 1."),
    relative: bool = typer.Option(False, "--relative", help="Checkpoint mode: ε relative to B·‖w_i‖₁."),
    arch: str = typer.Option("fcn", "--arch", help="fcn | cnn (3×3 kernels on a 1×8×8 input)."),
    width: int = typer.Option(64, "--width", help="Hidden width (channels for cnn)."),
    depth: int = typer.Option(2, "--depth", help="Number of layers."),
    density: float = typer.Option(0.5, "--density", help="Keep probability / fraction ρ in (0, 1]."),
    method: str = typer.Option("random", "--method", help="random | magnitude."),
    dist: str = typer.Option("normal", "--dist", help="Weight distribution: normal | uniform."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Evaluate the theory bounds (docs/math.md §7–8): the probabilistic pruning gap of random networks of given sizes,
    or the ℓ_q per-neuron keep counts and output-change bound of a checkpoint."""
    import math

    from pqprune.files import FileFormatError, to_json

    out = Console()
    try:
        if checkpoint is not None:
            if eps is None:
                fail("--checkpoint needs --eps (the per-neuron tolerance)")
            src = open_checkpoint(checkpoint, round_, masks)
            names = selected_names(src, include, exclude)
            state, mask_map = src.load()
            result = _bound_checkpoint(state, mask_map, names, q, eps, input_bound, relative)
            title = f"ℓ_q bound rule (q={q}, ε={eps}{' relative' if relative else ''}, B={input_bound}): {src.what}"
            reading = _reading_checkpoint(result["summary"], eps, input_bound, relative)
        else:
            spec = RandomNetSpec(arch=arch, width=width, depth=depth, density=density, method=method, dist=dist)
            if delta is None:  # the gap promised w.p. 0.9 is printed beside P(gap ≤ ε): it says what ε would do
                delta = 0.1
            result = _bound_sizes(spec, eps, delta)
            reading = _reading_sizes(result["summary"], eps, delta)
            title = (
                f"High-probability pruning gap on the unit ball: {arch} width={width} depth={depth} "
                f"density={density} {method} {dist}"
            )
    except (ValueError, FileFormatError) as err:
        fail(str(err))
    if as_json:
        typer.echo(to_json(result, sort_keys=True))
        return
    rows = result["layers"]
    cells = [
        [f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v) for v in row.values()] for row in rows
    ]
    out.print(title, highlight=False, soft_wrap=True)
    out.print(_text_table(tuple(rows[0]), cells), highlight=False, soft_wrap=True)  # cells never cut
    for key, value in result["summary"].items():
        out.print(
            f"{key}: {value:.6g}" if isinstance(value, float) else f"{key}: {value}", highlight=False, soft_wrap=True
        )
    out.print(f"how to read it: {reading}", highlight=False, soft_wrap=True)


def _reading_sizes(summary: dict, eps: float | None, delta: float) -> str:
    """One sentence on what the gap bound's numbers promise (docs/theory.md §4)."""
    gap = summary[f"gap bound holding with probability >= {1 - delta:g}"]
    text = (
        f"over the random draw of weights and pruning, with probability >= {1 - delta:g} no input of the unit "
        f"ball moves the output by more than {gap:.3g}"
    )
    if eps is not None:
        prob = summary[f"guaranteed P(gap <= {eps:g})"]
        text += (
            f"; the output moves by at most {eps:g} with probability >= {prob:.3g}"
            if prob > 0
            else f"; at ε = {eps:g} the bound promises nothing (0): try ε >= {gap:.3g}"
        )
    return text + " (a guarantee, measured 6-200x looser than real gaps: docs/theory.md §4)"


def _reading_checkpoint(summary: dict, eps: float, input_bound: float, relative: bool) -> str:
    """One sentence on what the ℓ_q bound's numbers promise (docs/theory.md §2)."""
    tol = f"{eps:g} × its largest possible change B·‖w_i‖₁" if relative else f"{eps:g}"
    text = (
        f"keeping {100 * summary['kept fraction']:.1f}% of the surviving weights (each neuron its largest) moves no "
        f"neuron's pre-activation by more than {tol} for inputs |x_j| <= {input_bound:g}"
    )
    if summary["kept fraction"] >= 1.0:
        text += "; nothing can be pruned at this ε" + ("" if relative else " (try --relative with ε near 1)")
    elif relative and eps >= 1:
        text += "; with ε >= 1 that promises no more than deleting the neuron would"
    return text + " (docs/theory.md §2)"


def _bound_sizes(spec, eps: float | None, delta: float | None) -> dict:
    """Per-layer moments and operator-norm bounds, then the gap bound at δ and/or the probability at ε."""
    shapes = spec.weight_shapes()
    n_events = 3 * len(shapes) - 2
    d_each = (delta if delta is not None else 0.1) / n_events
    layers: list[dict[str, Any]] = []
    for shape, s in zip(shapes, spec.scales()):
        rows = shape[0]
        if spec.method == "random":
            mom = random_moment(spec.density, s * s, m=rows)
        elif spec.dist == "normal":
            mom = magnitude_moment_normal(magnitude_threshold(spec.density, "normal", s), s, m=rows)
        else:
            K = 3**0.5 * s
            mom = magnitude_moment_uniform(magnitude_threshold(spec.density, "uniform", K), K, m=rows)
        layers.append(
            {
                "layer": len(layers) + 1,
                "shape": "×".join(map(str, shape)),
                "pruned_fraction": mom.pruned_fraction,
                "E|e|^2 (|x|=1)": mom.second_moment,
                "|W| bound": random_matrix_norm_bound("full", spec, shape, d_each),
                "|W'| bound": random_matrix_norm_bound("kept", spec, shape, d_each),
                "|W-W'| bound": random_matrix_norm_bound("err", spec, shape, d_each),
            }
        )
    summary: dict[str, object] = {"norm bounds at delta per event": d_each}
    if delta is not None:
        summary[f"gap bound holding with probability >= {1 - delta:g}"] = hp_gap_bound(spec, delta)
    if eps is not None:
        summary[f"guaranteed P(gap <= {eps:g})"] = guaranteed_probability(spec, eps)
    return {"spec": dict(spec.__dict__), "layers": layers, "summary": summary}


def _bound_checkpoint(
    state: dict, masks: dict, names: list[str], q: float, eps: float, input_bound: float, relative: bool
) -> dict:
    """ℓ_q keep counts per layer (of ``names``) among the survivors of ``masks``; through the network when the 2-D
    weights chain (ReLU assumed between them)."""

    summary: dict[str, object] = {}
    try:
        net = lq_network_bound(state, q, eps, input_bound=input_bound, relative=relative, masks=masks)
        bounds = net.layers
        summary["output change bound (l2, from l_q bounds)"] = net.output_bound
        summary["output change bound (l2, from exact tails)"] = net.output_bound_tail
        summary["assumption"] = "layers chain as Linear→ReLU→…→Linear; hidden input bounds propagated by ‖w'‖₁"
    except ValueError:
        bounds = [
            lq_layer_bound(state[name], q, eps, input_bound, relative=relative, mask=masks.get(name), name=name)
            for name in names
        ]
        summary["assumption"] = f"layers do not chain: every layer's inputs assumed |h| ≤ {input_bound}"
    kept = sum(b.kept for b in bounds)
    total = sum(b.total for b in bounds)
    summary["kept"] = kept
    summary["total"] = total
    summary["kept fraction"] = kept / total if total else float("nan")
    layers = [
        {
            "layer": b.name,
            "shape": "×".join(map(str, b.shape)),
            "input bound": b.input_bound,
            "survivors": b.total,
            "kept": b.kept,
            "kept fraction": b.kept / b.total if b.total else float("nan"),
            "max neuron bound": b.linf,
            "l2 bound": b.l2,
            "keep counts min/max": f"{int(b.keep.min())}/{int(b.keep.max())}",
        }
        for b in bounds
    ]
    return {"layers": layers, "summary": summary}


# --------------------------------------------------------------------------------------------- theory mc, theory teacher
theory_app = typer.Typer(
    help="Theory studies (docs/math.md §7–8): the Monte-Carlo pruning gap of random networks and the teacher experiment.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT,
)


@theory_app.command("mc")
def theory_mc_command(
    arch: str = typer.Option(
        "fcn", "--arch", help="fcn | cnn (3×3 kernels on 1×8×8 inputs; width = channels), or both: fcn,cnn."
    ),
    widths: str = typer.Option(
        "16,32,64", "--width", "--widths", help="Hidden widths, comma-separated (as bound --width)."
    ),
    depths: str = typer.Option("2,3", "--depth", "--depths", help="Depths (layers; ≥ 2 for cnn), comma-separated."),
    densities: str = typer.Option(
        "0.9,0.5", "--density", "--densities", help="Keep fractions ρ in (0, 1], comma-separated."
    ),
    method: str = typer.Option("random,magnitude", "--method", help="random, magnitude or both."),
    eps: str = typer.Option("1,15", "--eps", help="Comma-separated tolerances ε > 0 on sup_{‖x‖≤1}‖F(x) − F'(x)‖₂."),
    dist: str = typer.Option("normal", "--dist", help="Weight distribution: normal | uniform."),
    draws: int = typer.Option(20, "--draws", help="Networks drawn per configuration (N)."),
    inputs: int = typer.Option(64, "--inputs", help="Unit-sphere inputs per draw."),
    restarts: int = typer.Option(2, "--restarts", help="Projected-gradient ascents per draw."),
    steps: int = typer.Option(15, "--steps", help="Steps per ascent."),
    delta: float = typer.Option(0.1, "--delta", help="δ in (0, 1): also report the gap the bound guarantees w.p. 1−δ."),
    seed: int = typer.Option(0, "--seed", help="Seed (the same for every configuration)."),
    db: str = typer.Option("runs/pqprune.db", "--db", help=DB_HELP + " Cells go to table `theory`."),
    out: str = typer.Option("report", "--out", help="Folder of the figure theory_mc.png and theory_mc.json."),
    threads: int = typer.Option(1, "--threads", help="torch threads (small networks run fastest on one)."),
    as_json: bool = typer.Option(False, "--json", help="Print the cells as JSON instead of a table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
) -> None:
    """Monte-Carlo study of random and magnitude pruning of random networks [Qian21], docs/math.md §8: for each width,
    depth, density and method, p̂ = P(gap ≤ ε) with its Wilson 95% interval beside the probability the proven
    bound guarantees; cells go to the results database, a table and a figure."""
    from pathlib import Path

    from pqprune.files import to_json
    from pqprune.store import StoreError, describe
    from pqprune.theory.mc_study import monte_carlo_grid, plot_grid, save_grid
    from pqprune.threads import torch_threads

    grid = dict(
        archs=_csv_values("--arch", arch, str),
        widths=_csv_values("--width", widths, int),
        depths=_csv_values("--depth", depths, int),
        densities=_csv_values("--density", densities, float),
        methods=_csv_values("--method", method, str),
        eps=_csv_values("--eps", eps, float),
    )
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")

    def progress(cell) -> None:
        if not as_json and cell.eps == grid["eps"][0]:
            err_console.print(
                f"{cell.arch} width={cell.width} depth={cell.depth} ρ={cell.density:g} {cell.method}: "
                f"{cell.seconds:.1f} s",
                highlight=False,
            )

    try:
        with torch_threads(threads):
            cells = monte_carlo_grid(
                **grid,
                dist=dist,
                draws=draws,
                n_inputs=inputs,
                restarts=restarts,
                steps=steps,
                seed=seed,
                delta=delta,
                db=db,
                progress=progress,
            )
    except (ValueError, StoreError) as err:
        fail(str(err))
    folder = Path(out)
    figure = plot_grid(cells, folder / "theory_mc.png")
    save_grid(cells, folder / "theory_mc.json")
    if as_json:
        typer.echo(to_json([c.as_dict() for c in cells]))
        return
    headers = [
        "arch",
        "width",
        "depth",
        "ρ",
        "method",
        "ε",
        "N",
        "p̂ [95% CI]",
        "bound P(gap≤ε)",
        f"bound ε@{1 - delta:g}",
        f"gap q{1 - delta:g}",
        "bound/gap",
        "s",
    ]
    rows = [
        [
            c.arch,
            str(c.width),
            str(c.depth),
            f"{c.density:g}",
            c.method,
            f"{c.eps:g}",
            str(c.n),
            f"{c.p_hat:.2f} [{c.ci_low:.2f}, {c.ci_high:.2f}]",
            f"{c.guaranteed_probability:.3f}",
            _g(c.bound_eps),
            _g(c.gap_q),
            f"{c.looseness:.0f}×",
            f"{c.seconds:.1f}",
        ]
        for c in cells
    ]
    _print_rows(
        f"Monte-Carlo pruning gap on the unit ball ({dist} weights, N={draws}, seed {seed})", headers, rows, markdown
    )
    err_console.print(
        f"study {cells[0].settings['study']}: {len(cells)} cells in {describe(db)} (table theory); figure {figure}",
        highlight=False,
        soft_wrap=True,
    )


@theory_app.command("teacher")
def theory_teacher_command(
    dists: str = typer.Option("normal,t,cauchy", "--dists", help="Teacher entry distributions: normal, t, cauchy."),
    input_dim: int = typer.Option(128, "--input-dim", help="Teacher input size."),
    hidden: str = typer.Option("256", "--hidden", help="Comma-separated hidden widths ('' or 0: linear teacher)."),
    output_dim: int = typer.Option(4, "--output-dim", help="Teacher outputs."),
    df: float = typer.Option(3.0, "--df", help="Degrees of freedom of the Student-t entries."),
    c: float = typer.Option(1.0, "--c", help="Rows are scaled to ℓ₁ norm 1/c."),
    q: float = typer.Option(0.5, "--q", help="ℓ_q exponent of the LqNeuron rules, 0 < q < 1."),
    input_bound: float = typer.Option(1.0, "--input-bound", help="Inputs in the box |x_j| ≤ B."),
    eps: str = typer.Option(
        "0.3,0.5,0.7,1,1.5,2,3", "--eps", help="Bound rule: relative tolerances ε > 0 (ε_i = ε·B·‖w_i‖₁)."
    ),
    gammas: str = typer.Option("0.5,1,1.5,2,3", "--gammas", help="Index rule: γ values."),
    sap_gammas: str = typer.Option("0.5,1,1.5,2", "--sap-gammas", help="SAP (0.5, 1) at layer scope: γ values."),
    densities: str = typer.Option(
        "0.05,0.1,0.2,0.4,0.7,0.85",
        "--density",
        "--densities",
        help="Magnitude pruning: kept fractions per layer, comma-separated.",
    ),
    n_test: int = typer.Option(2048, "--n-test", help="Test inputs: this many uniform points and as many corners."),
    seed: int = typer.Option(0, "--seed", help="Seed of the teacher and the test inputs."),
    out: str = typer.Option("report", "--out", help="Folder of the figure theory_teacher.png and theory_teacher.json."),
    threads: int = typer.Option(1, "--threads", help="torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print the points as JSON instead of a table."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
) -> None:
    """Teacher experiment [Yang22], docs/math.md §7: prune teachers with controlled soft sparsity by the ℓ_q bound rule,
    the ℓ_q index rule, SAP and magnitude pruning; weights kept vs max/mean output error on the box, each point
    beside magnitude pruning at the same per-layer counts."""
    from pathlib import Path

    from pqprune.files import to_json
    from pqprune.theory.teacher_study import plot_teacher, save_teacher, teacher_studies
    from pqprune.threads import torch_threads

    hidden_sizes = [h for h in _csv_values("--hidden", hidden, int) if h != 0] if hidden.strip() else []
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    try:
        with torch_threads(threads):
            studies = teacher_studies(
                _csv_values("--dists", dists, str),
                input_dim=input_dim,
                hidden=tuple(hidden_sizes),
                output_dim=output_dim,
                df=df,
                c=c,
                seed=seed,
                q=q,
                input_bound=input_bound,
                bound_eps=_csv_values("--eps", eps, float),
                index_gammas=_csv_values("--gammas", gammas, float),
                sap_gammas=_csv_values("--sap-gammas", sap_gammas, float),
                densities=_csv_values("--density", densities, float),
                n_test=n_test,
            )
    except ValueError as err:
        fail(str(err))
    folder = Path(out)
    figure = plot_teacher(studies, folder / "theory_teacher.png")
    payload = [s.as_dict() for s in studies]
    save_teacher(studies, folder / "theory_teacher.json")
    if as_json:
        typer.echo(to_json(payload))
        return
    headers = [
        "teacher",
        "method",
        "param",
        "kept",
        "kept %",
        "max err",
        "mean err",
        "magnitude same counts: max",
        "mean",
        "bound (ℓ_q)",
        "bound (tails)",
        "bound/‖ΔF‖₂",
    ]
    rows = [
        [
            p.dist,
            p.method,
            f"{p.param}={p.value:g}",
            str(p.kept),
            f"{100 * p.kept_fraction:.1f}",
            _g(p.max_err),
            _g(p.mean_err),
            _g(p.mag_max_err),
            _g(p.mag_mean_err),
            _g(p.bound),
            _g(p.bound_tail),
            MISSING if p.looseness is None else f"{p.looseness:.0f}×",
        ]
        for s in studies
        for p in s.points
    ]
    _print_rows(
        f"Teachers {input_dim}-{'-'.join(map(str, hidden_sizes))}-{output_dim} (rows ℓ₁ = 1/{c:g}), "
        f"errors |F − F'| on {2 * n_test} inputs of |x| ≤ {input_bound:g}",
        headers,
        rows,
        markdown,
    )
    err_console.print(f"figure {figure}; {sum(s.seconds for s in studies):.1f} s", highlight=False, soft_wrap=True)
