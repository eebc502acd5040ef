"""Plot docs/images/convergence-256.png from the convergence JSON (docs/benchmarks.md).

NRMSE (global factor removed, on the device) against iterations for each
likelihood schedule of the 256 x 256 x 4,096 batch in
``docs/benchmarks/2026-12-02-h200-convergence-416199e.json``. From the
repository root::

    python docs/convergence_plot.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SOURCE = Path("docs/benchmarks/2026-12-02-h200-convergence-416199e.json")
TARGET = Path("docs/images/convergence-256.png")
LABELS = {
    "batch/amplitude_iterations=0": "Poisson only",
    "batch": "amplitude for 10 iterations",
    "batch/amplitude_iterations=30": "amplitude for 30 iterations",
    "batch/amplitude_iterations=1000": "amplitude throughout",
}


def main() -> None:
    results = json.loads(SOURCE.read_text())["results"]
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for result in results:
        label = LABELS.get(result["variant"])
        if label is None or not result["case"].startswith("256:4096"):
            continue
        rows = [row for row in result["rows"] if "seconds" not in row]
        axes.plot([r["iteration"] for r in rows], [r["quick"] for r in rows], "o-", label=label)
    axes.axhline(0.10, color="gray", linestyle=":", label="NRMSE 0.10")
    axes.set_xlabel("iteration")
    axes.set_ylabel("NRMSE (global factor removed)")
    axes.set_title("256 x 256 x 4,096 frames, one H200 (416199e)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(TARGET, dpi=100)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
