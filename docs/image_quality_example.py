"""The picture of docs/real-data.md "Images as delivered": a beamline-like scan, cold start.

Run from the repository root (NumPy, about a minute on two CPU cores)::

    python docs/image_quality_example.py

Simulates a scan with ``sim.sample.BEAMLINE_LIKE`` (a sample with a mean phase
gradient, a centrally stopped probe defocused 60 um, 2e5 photons per frame,
three hot pixels in the mask), reconstructs it from a cold start with the known
defocus, and draws the truth and the image as delivered (only the global
complex factor removed for display), the NLL curve and the half-scan FRC.
Writes ``docs/images/beamline-like.png`` and prints the numbers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bluesky_ptycho import Reconstructor  # noqa: E402
from bluesky_ptycho.metrics import (  # noqa: E402
    COVERED_RELATIVE,
    common_region,
    crop_truth,
    frc,
    snapshot_nrmse,
)
from bluesky_ptycho.sim.sample import BEAMLINE_LIKE, default_config, simulate_scan  # noqa: E402

IMAGES = Path(__file__).resolve().parent / "images"
ITERATIONS = 100


def reconstruct(scan, config, frames=slice(None), iterations=ITERATIONS):
    rec = Reconstructor(config, backend="numpy")
    rec.add_frames(scan.frames[frames], scan.x_motor[frames], scan.y_motor[frames])
    nll = [rec.iterate(1) for _ in range(iterations)]
    return rec.snapshot(live=False), nll


def main() -> None:
    scan = simulate_scan(default_config(64), n_frames=256, seed=1, **BEAMLINE_LIKE)
    mask = np.ones(scan.config.frame_shape, np.uint8)
    mask[scan.hot_pixels[:, 0], scan.hot_pixels[:, 1]] = 0
    config = scan.config.replace(mask=mask, probe_propagation_m=BEAMLINE_LIKE["defocus_m"])
    snap, nll = reconstruct(scan, config)
    nrmse = snapshot_nrmse(snap, scan.sample.object, scan.sample.origin_m)
    print(f"cold start, {ITERATIONS} iterations: NRMSE as delivered {nrmse:.4f}")
    print(f"beam axis held at {snap.metrics['beam_center_offset_px']} px "
          f"({snap.metrics['beam_center_source']}); data's disc centre "
          f"{np.round(snap.metrics['beam_center_measured_px'], 3)} px")  # fmt: skip
    halves = [reconstruct(scan, config, slice(k, None, 2), 60)[0] for k in (0, 1)]
    a, b = halves
    obj_a, obj_b, region = common_region(
        a.object, a.coverage, a.origin_m, b.object, b.coverage, b.origin_m, a.pixel_m
    )
    frc_mean, frequency, correlation = frc(obj_a, obj_b, region)
    print(f"half-scan FRC (0.1-0.5 Nyquist): {frc_mean:.3f}")

    truth = crop_truth(
        scan.sample.object, scan.sample.origin_m, snap.object.shape, snap.origin_m, snap.pixel_m
    )
    covered = (snap.coverage >= COVERED_RELATIVE) & np.isfinite(truth)
    truth = np.where(covered, truth, np.nan)
    factor = np.vdot(snap.object[covered], truth[covered]) / np.vdot(
        snap.object[covered], snap.object[covered]
    )
    shown = np.where(covered, factor * snap.object, np.nan)
    rows = np.flatnonzero(covered.any(axis=1))
    cols = np.flatnonzero(covered.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))

    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for row, (image, label) in enumerate(((truth, "truth"), (shown, "as delivered"))):
        amp = axes[row, 0].imshow(np.abs(image[crop]), cmap="gray", vmin=0.4, vmax=1.1)
        axes[row, 0].set_title(f"{label}: amplitude")
        fig.colorbar(amp, ax=axes[row, 0], shrink=0.8)
        phase = axes[row, 1].imshow(np.angle(image[crop]), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        axes[row, 1].set_title(f"{label}: phase (rad)")
        fig.colorbar(phase, ax=axes[row, 1], shrink=0.8)
    axes[0, 2].semilogy(np.arange(1, len(nll) + 1), nll)
    axes[0, 2].set_xlabel("iteration")
    axes[0, 2].set_title("Poisson NLL")
    axes[1, 2].plot(frequency, correlation)
    axes[1, 2].axvspan(0.1, 0.5, alpha=0.15)
    axes[1, 2].set_ylim(-0.1, 1.05)
    axes[1, 2].set_xlabel("spatial frequency / Nyquist")
    axes[1, 2].set_title(f"half-scan FRC (mean {frc_mean:.3f})")
    for ax in axes[:, :2].ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"beamline-like scan, cold start: NRMSE {nrmse:.3f} as delivered (no ramp removed)"
    )
    fig.tight_layout()
    IMAGES.mkdir(exist_ok=True)
    fig.savefig(IMAGES / "beamline-like.png", dpi=80)
    print(f"wrote {IMAGES / 'beamline-like.png'}")


if __name__ == "__main__":
    main()
