"""Render a `pqprune report` page in headless Chromium: every image loads, no console error, no network, a screenshot.

Usage (Chromium from Debian: ``apt-get install -y chromium``)::

    .venv/bin/python bench/render_report.py REPORT_DIR [--screenshot PATH] [--width 1366 --height 2400]

Checks, each printed; the exit code is 0 only when all pass (1 otherwise, 2 for bad input):

1. every ``<img>`` is complete with ``naturalWidth > 0`` — a probe copy of ``index.html`` (same folder, so relative
   image paths resolve the same) gets a small inline script that, on ``load``, writes the counts as JSON into the
   DOM, which ``--dump-dom`` prints;
2. no console error: the probe also records ``window.onerror``, unhandled rejections and ``console.error``, and
   Chromium's own log (``--enable-logging=stderr --v=0``) is searched for "Uncaught" and "ERROR:CONSOLE";
3. no network request: the probe lists every resource the page fetched (Resource Timing) that is not a
   ``data:`` or ``file:`` URL, and the page's text must not reference ``http(s)://``;
4. a screenshot of the real ``index.html`` at a laptop-sized window (``--screenshot``).

Not part of the test suite: Chromium is not guaranteed on every machine and takes seconds to start.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Headless, no GPU, no sandbox (containers run as root), and nothing that phones home on its own, so any network
# activity seen would come from the page.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
PROBE_ID = "pqprune-render-probe"
PROBE = f"""<script>
(function () {{
  var errors = [];
  window.addEventListener('error', function (e) {{ errors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || e.type)); }}, true);
  window.addEventListener('unhandledrejection', function (e) {{ errors.push('unhandled rejection: ' + e.reason); }});
  var origError = console.error;
  console.error = function () {{ errors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); origError.apply(console, arguments); }};
  window.addEventListener('load', function () {{
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
    var remote = performance.getEntriesByType('resource').map(function (r) {{ return r.name; }})
      .filter(function (n) {{ return !/^(data|file|blob|about):/.test(n); }});
    var pre = document.createElement('pre');
    pre.id = '{PROBE_ID}';
    pre.textContent = JSON.stringify({{images: imgs.length, loaded: ok, errors: errors, remote: remote,
                                      width: document.documentElement.scrollWidth, viewport: window.innerWidth}});
    document.body.appendChild(pre);
  }});
}})();
</script>"""
CONSOLE_ERROR = re.compile(r"Uncaught|ERROR:CONSOLE|:CONSOLE\(\d+\)\].*(?:Error|error)")


def find_chromium(explicit: str | None) -> str:
    for name in [explicit] if explicit else ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    sys.exit("error: no Chromium found; install it with `apt-get install -y chromium` or pass --chromium PATH")


def run_chromium(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a fresh profile (no cache, no state from earlier runs)."""
    with tempfile.TemporaryDirectory(prefix="pqprune-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def probe(chromium: str, index: Path, timeout: float, width: int, height: int) -> tuple[dict, str]:
    """Load a probe copy of the page; return the probe's JSON and Chromium's log."""
    page = index.read_text(encoding="utf-8")
    probed = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + PROBE, page, count=1, flags=re.IGNORECASE)
    probe_file = index.with_name(".render_probe.html")
    probe_file.write_text(probed, encoding="utf-8")
    try:
        # --virtual-time-budget lets the load event fire (and images decode) before the DOM is dumped.
        res = run_chromium(
            chromium,
            [
                "--dump-dom",
                "--virtual-time-budget=10000",
                f"--window-size={width},{height}",
                probe_file.resolve().as_uri(),
            ],
            timeout,
        )
    finally:
        probe_file.unlink(missing_ok=True)
    found = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', res.stdout, re.DOTALL)
    if not found:
        return {}, res.stderr
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return json.loads(text), res.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report_dir", type=Path, help="folder written by `pqprune report --out`")
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG to write (default REPORT_DIR/screenshot.png)")
    ap.add_argument("--chromium", default=None, help="Chromium executable (default: found on PATH)")
    ap.add_argument("--width", type=int, default=1366, help="window width in CSS pixels (a common laptop)")
    ap.add_argument("--height", type=int, default=2400, help="window height of the screenshot")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per Chromium run")
    args = ap.parse_args(argv)

    index = args.report_dir / "index.html"
    if not index.is_file():
        print(f"error: no {index}; write it with `pqprune report --out {args.report_dir}`", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    checks: list[tuple[str, bool, str]] = []

    page = index.read_text(encoding="utf-8")
    refs = sorted(set(re.findall(r"https?://[^\s\"'<>)]+", page)))
    checks.append(("no http(s):// reference in the page", not refs, ", ".join(refs[:5])))

    result, log = probe(chromium, index, args.timeout, args.width, args.height)
    if not result:
        checks.append(
            ("probe ran", False, "the probe's output was not in the dumped DOM; Chromium log:\n" + log[-2000:])
        )
    else:
        checks.append(
            (
                "every image loaded",
                result["images"] > 0 and result["loaded"] == result["images"],
                f"{result['loaded']}/{result['images']} images complete with naturalWidth > 0",
            )
        )
        checks.append(("no error in the page", not result["errors"], "; ".join(result["errors"][:5])))
        checks.append(("no network request", not result["remote"], ", ".join(result["remote"][:5])))
        checks.append(
            (
                "no horizontal scrolling",
                result["width"] <= result["viewport"] + 1,
                f"page {result['width']} px wide in a {result['viewport']} px window",
            )
        )
    console_lines = [line for line in log.splitlines() if CONSOLE_ERROR.search(line)]
    checks.append(("no console error in Chromium's log", not console_lines, "\n".join(console_lines[:5])))

    shot = (args.screenshot or args.report_dir / "screenshot.png").resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    res = run_chromium(
        chromium,
        [
            f"--screenshot={shot}",
            f"--window-size={args.width},{args.height}",
            "--virtual-time-budget=10000",
            index.resolve().as_uri(),
        ],
        args.timeout,
    )
    checks.append(
        (
            "screenshot written",
            shot.is_file() and shot.stat().st_size > 0,
            str(shot) if shot.is_file() else res.stderr[-2000:],
        )
    )

    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
