"""``pqprune analyze`` on a sharded 2-billion-parameter bfloat16 checkpoint: peak resident memory and time at
every scope, side by side with a plain script that loads each shard with safetensors and sums every tensor.

Each command runs as its own process; its peak resident set size is that process's ``ru_maxrss`` (``os.wait4``),
its time the wall clock from start to exit, with the page cache hot (the baseline runs once first and is not
counted). Every command runs once per round, ``--repeat`` rounds in rotating order; the table gives medians, and
the ratio to the baseline is the median of the per-round ratios (this 2-core machine is shared: its load drifts).
Targets: peak RSS < 1.5 GB and time ≤ 2× the baseline's.

    python bench/bench_checkpoints.py                      # makes /tmp/pqprune-bench-2b if missing, deletes it after
    python bench/bench_checkpoints.py --checkpoint DIR --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 1500
TIME_LIMIT = 2.0
BASELINE = """
import sys
from pathlib import Path
from safetensors.torch import load_file
total = 0.0
for shard in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    for t in load_file(str(shard)).values():
        total += float(t.sum())
print(total)
"""


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of one run of ``cmd`` as a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss: kilobytes on Linux


def rounds(runs: dict[str, list[str]], repeat: int) -> dict[str, list[tuple[float, float, float]]]:
    """Every command once per round, in an order rotating from round to round (the machine's load drifts; each
    round's commands see about the same load)."""
    labels = list(runs)
    out: dict[str, list[tuple[float, float, float]]] = {label: [] for label in labels}
    for r in range(repeat):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            out[label].append(measure(runs[label]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/pqprune-bench-2b"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint (default: delete it if made here)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of every command")
    a = ap.parse_args(argv)
    made = False
    if not (a.checkpoint / "model.safetensors.index.json").exists():
        sys.path.insert(0, str(ROOT / "bench"))
        from make_sharded_checkpoint import make

        t0 = time.perf_counter()
        make(a.checkpoint)
        made = True
        print(f"made {a.checkpoint} in {time.perf_counter() - t0:.0f} s", flush=True)
    size = sum(p.stat().st_size for p in a.checkpoint.glob("*.safetensors"))
    py = sys.executable
    baseline = [py, "-c", BASELINE, str(a.checkpoint)]
    analyze = [py, "-m", "pqprune", "analyze", str(a.checkpoint)]
    runs = {
        "baseline: load_file each shard, sum each tensor": baseline,
        "analyze --scope global --json": [*analyze, "--scope", "global", "--json"],
        "analyze --scope layer --json": [*analyze, "--scope", "layer", "--json"],
        "analyze --scope neuron --json": [*analyze, "--scope", "neuron", "--json"],
        "analyze --group-by suffix (table + metrics)": [*analyze, "--group-by", "suffix"],
    }
    measure(baseline)  # the page cache made hot
    print(f"{a.checkpoint}: {size / 1e9:.2f} GB in {len(list(a.checkpoint.glob('*.safetensors')))} shards")
    results = rounds(runs, a.repeat)
    base = results[next(iter(runs))]
    print(f"{'command':<48} {'seconds':>8} {'x baseline':>10} {'peak RSS MB':>12} {'CPU s':>7}")
    ok = True
    for label, res in results.items():
        seconds = statistics.median(s for s, _, _ in res)
        ratio = statistics.median(s / b for (s, _, _), (b, _, _) in zip(res, base))
        rss = max(r for _, r, _ in res)
        cpu = statistics.median(c for _, _, c in res)
        flag = "" if label.startswith("baseline") or (rss < RSS_LIMIT_MB and ratio <= TIME_LIMIT) else "  <- over"
        ok = ok and not flag
        print(f"{label:<48} {seconds:8.2f} {ratio:10.2f} {rss:12.0f} {cpu:7.2f}{flag}", flush=True)
    print(f"medians of {a.repeat} rounds; x baseline: median of the ratios to the baseline of the same round")
    print(f"targets: peak RSS < {RSS_LIMIT_MB} MB, time <= {TIME_LIMIT}x baseline: {'met' if ok else 'NOT met'}")
    if made and not a.keep:
        shutil.rmtree(a.checkpoint)
        print(f"deleted {a.checkpoint}")


if __name__ == "__main__":
    main()
