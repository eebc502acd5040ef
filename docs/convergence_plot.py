"""Plot docs/images/convergence-256.png from the convergence JSON (docs/benchmarks.md).

NRMSE (global factor removed, on the device) against iterations for each
likelihood schedule of the 256 x 256 x 4,096 batch in the JSON files of
``SOURCES`` (the schedules of 416199e, and the default before and after the
amplitude iterations' early end was fixed in 98ab383, and with their cap raised
to 100). From the repository root::

    python docs/convergence_plot.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BENCHMARKS = Path("docs/benchmarks")
TARGET = Path("docs/images/convergence-256.png")
#: (JSON file, variant, label)
SOURCES = (
    ("2026-12-02-h200-convergence-416199e.json", "batch/amplitude_iterations=0", "Poisson only"),
    ("2026-12-02-h200-convergence-416199e.json", "batch/amplitude_iterations=30",
     "amplitude for 30 iterations (416199e)"),
    ("2026-12-02-h200-convergence-416199e.json", "batch/amplitude_iterations=1000",
     "amplitude throughout"),
    ("2026-12-02-h200-convergence-f3b63dd.json", "batch",
     "default, f3b63dd: ended by one stalled iteration (4)"),
    ("2026-12-02-h200-convergence-98ab383.json", "batch",
     "98ab383: 3 stalled in a row, cap 30"),
    ("2026-12-02-h200-convergence-amplitude-cap-ba2793d.json", "batch/amplitude_iterations=100",
     "default now: 3 stalled in a row, cap 100"),
)  # fmt: skip


def main() -> None:
    figure, axes = plt.subplots(figsize=(7.0, 4.4))
    for name, variant, label in SOURCES:
        results = json.loads((BENCHMARKS / name).read_text())["results"]
        result = next(
            r for r in results if r["variant"] == variant and r["case"].startswith("256:4096")
        )
        rows = [row for row in result["rows"] if "seconds" not in row]
        style = "s--" if "stalled" in label else "o-"
        axes.plot([r["iteration"] for r in rows], [r["quick"] for r in rows], style, label=label)
    axes.axhline(0.10, color="gray", linestyle=":", label="NRMSE 0.10")
    axes.set_xlabel("iteration")
    axes.set_ylabel("NRMSE (global factor removed)")
    axes.set_title("256 x 256 x 4,096 frames, cold start, one H200")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(TARGET, dpi=100)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
