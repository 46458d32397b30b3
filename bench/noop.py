"""Measures kaibuild's no-op build time on a workspace of KAI-Scheduler's size.

Usage (after `source scripts/dev-env.sh`):
    python bench/noop.py                      # a synthetic KAI-size workspace
    python bench/noop.py --workspace PATH     # e.g. a KAI-Scheduler checkout
    python bench/noop.py --runs 5 --targets //services/...

The synthetic workspace is examples/kai-mini plus PACKAGES generated
packages of FILES Go files each (default 400 x 5 = 2000 files, about KAI's
count of non-test .go files), every service importing all of them. The first
build fills the cache (it is not timed); each later run is a no-op whose wall
time, and what it read, is printed. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def synthetic_workspace(root: Path, packages: int, files: int) -> Path:
    ws = root / "kai-size"
    shutil.copytree(REPO / "examples" / "kai-mini", ws, ignore=shutil.ignore_patterns("dist", ".kaibuild", "bin", "vendor"))
    imports = []
    for p in range(packages):
        pkg = ws / "pkg" / "gen" / f"p{p:03d}"
        pkg.mkdir(parents=True)
        for f in range(files):
            body = f"package p{p:03d}\n\n// F{f} is generated filler.\nfunc F{f}() int {{ return {p * files + f} }}\n"
            (pkg / f"f{f}.go").write_text(body)
        imports.append(f'\t_ "example.com/kai-mini/pkg/gen/p{p:03d}"')
    for main in (ws / "cmd").glob("*/main.go"):
        text = main.read_text()
        main.write_text(text.replace("import (\n", "import (\n" + "\n".join(imports) + "\n", 1))
    return ws


def kaibuild(ws: Path, cache: Path, targets: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "kaibuild", "build", *targets, "--platform", "linux/amd64",
                           "--cache-dir", str(cache)], cwd=ws, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"build failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="measure this workspace instead of a synthetic one")
    parser.add_argument("--targets", nargs="+", default=["//services/..."])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", type=int, default=400)
    parser.add_argument("--files", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="kaibuild-bench-"))
    ws = args.workspace.resolve() if args.workspace else synthetic_workspace(scratch, args.packages, args.files)
    cache = scratch / "cache"
    go_files = sum(1 for p in ws.rglob("*.go") if "vendor" not in p.parts)
    print(f"workspace: {ws} ({go_files} .go files)")
    first, line = kaibuild(ws, cache, args.targets)
    print(f"first build (fills the cache): {first:.1f}s  [{line}]")
    times = []
    for run in range(args.runs):
        seconds, line = kaibuild(ws, cache, args.targets)
        times.append(seconds)
        print(f"no-op {run + 1}: {seconds:.2f}s  [{line}]")
    print(f"no-op wall time: median {statistics.median(times):.2f}s, min {min(times):.2f}s, max {max(times):.2f}s "
          f"over {len(times)} runs (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if not args.workspace:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
