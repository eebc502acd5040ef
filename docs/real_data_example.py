"""The worked example of docs/real-data.md: simulate a "real" scan, calibrate, reconstruct, draw.

Run from the repository root (NumPy only, a few minutes on two CPU cores)::

    python docs/real_data_example.py [OUTDIR]

It writes ``OUTDIR/scan.cxi`` (default OUTDIR: a temporary folder), runs the
command-line steps of the guide in-process, prints their output, and redraws
the pictures in ``docs/images/real-data-*.png``.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bluesky_ptycho import cli  # noqa: E402
from bluesky_ptycho.calibration import (  # noqa: E402
    detect_orientation,
    estimate_beam,
    search_orientation_and_defocus,
)
from bluesky_ptycho.calibration.orientation import MIRROR, SAME, TWIN  # noqa: E402
from bluesky_ptycho.cxi import read_cxi, write_cxi  # noqa: E402
from bluesky_ptycho.metrics import crop_truth  # noqa: E402
from bluesky_ptycho.sim.sample import default_config, simulate_scan  # noqa: E402

IMAGES = Path(__file__).resolve().parent / "images"
#: what the "beamline" did, unknown to the reconstruction
PLANTED = {"dp_orient": "rot90_cw", "x_direction": 1, "y_direction": 1}
DEFOCUS_M = 120e-6  # sample 120 um downstream of the focus
PROBE = {"semiangle_rad": 2e-3, "defocus_m": DEFOCUS_M, "central_stop": 0.4}
ITERATIONS = 100


def run(argv: list[str]) -> str:
    """Run one ``bluesky-ptycho`` command in-process; print and return its output."""
    print("$ bluesky-ptycho " + " ".join(argv))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli.main(argv)
    text = buffer.getvalue()
    print(text)
    if status != 0:
        raise SystemExit(f"command failed with status {status}")
    return text


def simulate(path: Path) -> None:
    """A centrally stopped zone-plate probe 3.5 depths of focus out of focus, a detector
    turned a quarter turn; the CXI file holds raw motor readings (in metres)."""
    config = default_config(64, **PLANTED)
    scan = simulate_scan(config, n_frames=200, seed=3, **PROBE)
    raw_m = np.stack([scan.x_motor, scan.y_motor], axis=1) * config.position_scale_m
    write_cxi(
        path, scan.frames, raw_m, config, scan.sample.object, truth_origin_m=scan.sample.origin_m
    )


def load(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {
            name: f[name][()] for name in ("object", "probe", "coverage", "origin_m", "pixel_m")
        }


def figure_patterns(frames: np.ndarray, config) -> None:
    beam = estimate_beam(frames, config)
    mean = frames.mean(axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
    for ax, image, title in (
        (axes[0], frames[0], "one frame (counts)"),
        (axes[1], mean, "mean of 200 frames"),
    ):
        shown = ax.imshow(np.log10(image + 1), cmap="magma")
        ax.set_title(title)
        fig.colorbar(shown, ax=ax, label="log10(counts + 1)")
    centre = config.frame_shape[0] // 2
    axes[1].add_patch(
        plt.Circle((centre, centre), beam.disc_radius_px, fill=False, color="cyan", lw=1.2, ls="--")
    )
    axes[1].text(
        2,
        62,
        f"disc radius {beam.disc_radius_px:.1f} px\n"
        f"semi-angle {beam.semiangle_rad * 1e3:.2f} mrad\n"
        f"depth of focus {beam.depth_of_focus_m * 1e6:.0f} um",
        color="cyan",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(IMAGES / "real-data-patterns.png", dpi=110)
    plt.close(fig)


COLOURS = {SAME: "tab:green", MIRROR: "tab:olive", TWIN: "tab:red", "different": "tab:gray"}


def figure_orientation(cold, joint) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, result, title in (
        (axes[0], cold, "cold start: every candidate ties"),
        (axes[1], joint.orientation, f"probe propagated {joint.distance_m * 1e6:+.0f} um"),
    ):
        candidates = result.candidates
        values = [c.nll_per_pixel for c in candidates]
        colours = [COLOURS[c.relation] for c in candidates]
        ax.bar(range(1, 33), values, color=colours)
        ax.set_xticks(range(1, 33))
        ax.set_xticklabels(
            [f"{c.dp_orient} {c.x_direction:+d}{c.y_direction:+d}" for c in candidates],
            rotation=90,
            fontsize=6,
        )
        ax.set_ylabel("NLL per pixel after the trial")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(values) * 1.1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    axes[1].legend(
        handles, ["best", "mirror (same image)", "twin (conjugate)", "different"], fontsize=8
    )
    fig.tight_layout()
    fig.savefig(IMAGES / "real-data-orientation.png", dpi=110)
    plt.close(fig)


def figure_defocus(joint) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for key, table in joint.searches.items():
        distances = np.array([row.distance_m for row in table]) * 1e6
        nll = [row.nll_per_pixel for row in table]
        ax.plot(
            distances, nll, marker=".", label=f"{key[0]} x{key[1]:+d} y{key[2]:+d} (+7 equivalents)"
        )
    ax.axvline(DEFOCUS_M * 1e6, color="k", ls=":", label="true defocus")
    ax.axvline(joint.distance_m * 1e6, color="tab:green", ls="--", label="chosen")
    ax.set_xlabel("probe propagation distance (um)")
    ax.set_ylabel("NLL per pixel after the trial")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMAGES / "real-data-defocus.png", dpi=110)
    plt.close(fig)


def figure_reconstructions(results: dict[str, dict], truth: np.ndarray, truth_origin) -> None:
    """Amplitude and phase on the common canvas, over the region the good result covers."""
    names = list(results)
    reference = results[names[1]]
    region = reference["coverage"] >= 0.1
    true_obj = crop_truth(
        truth,
        truth_origin,
        reference["object"].shape,
        tuple(reference["origin_m"]),
        tuple(reference["pixel_m"]),
    )
    panels = {name: results[name]["object"] for name in names}
    panels["true object"] = true_obj
    fig, axes = plt.subplots(
        2, len(panels), figsize=(3.1 * len(panels) + 1, 6.2), layout="constrained"
    )
    for col, (name, obj) in enumerate(panels.items()):
        obj = np.where(region, obj, np.nan)
        # the data fix the object only up to a complex factor: show it normalised
        obj = obj / np.nanmean(obj)
        axes[0, col].imshow(np.abs(obj), cmap="gray", vmin=0.4, vmax=1.5)
        shown = axes[1, col].imshow(np.angle(obj), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        axes[0, col].set_title(name, fontsize=9)
        for row in (0, 1):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    axes[0, 0].set_ylabel("amplitude (normalised)")
    axes[1, 0].set_ylabel("phase")
    fig.colorbar(shown, ax=axes[:, -1], shrink=0.6, label="phase (rad)")
    fig.savefig(IMAGES / "real-data-reconstructions.png", dpi=80, bbox_inches="tight")
    plt.close(fig)


def figure_probe(result: dict) -> None:
    probe = result["probe"]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    axes[0].imshow(np.abs(probe), cmap="gray")
    axes[0].set_title("probe amplitude")
    axes[1].imshow(np.angle(probe), cmap="twilight")
    axes[1].set_title("probe phase")
    far = np.fft.fftshift(np.abs(np.fft.fft2(np.fft.ifftshift(probe))) ** 2)
    axes[2].imshow(np.log10(far + far.max() * 1e-4), cmap="magma")
    axes[2].set_title("|FFT(probe)|^2 (log)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(IMAGES / "real-data-probe.png", dpi=110)
    plt.close(fig)


def main(outdir: Path) -> None:
    IMAGES.mkdir(exist_ok=True)
    scan_path = outdir / "scan.cxi"
    simulate(scan_path)
    frames, x, y, config = read_cxi(scan_path)
    figure_patterns(frames, config)

    # 1. naive: defaults everywhere
    naive = outdir / "naive.h5"
    run(
        [
            "reconstruct",
            str(scan_path),
            "--iterations",
            str(ITERATIONS),
            "--output",
            str(naive),
            "--quiet",
            "--backend",
            "numpy",
        ]
    )
    # 2. orientation from a plain cold start: the probe is too far out of focus
    run(["detect-orientation", str(scan_path), "--quiet", "--backend", "numpy"])
    cold = detect_orientation(frames, x, y, config, backend="numpy")
    # 3. orientation and defocus together; the beamline says the sample is downstream
    run(
        [
            "detect-orientation",
            str(scan_path),
            "--probe-search",
            "--defocus-sign",
            "+1",
            "--quiet",
            "--backend",
            "numpy",
        ]
    )
    # every distance to the full count (no screening): the figure shows whole NLL curves
    joint = search_orientation_and_defocus(
        frames, x, y, config, defocus_sign=1, backend="numpy", screen_iterations=None
    )
    figure_orientation(cold, joint)
    figure_defocus(joint)
    # 4. reconstruct with the orientation found, searching the defocus again on the way
    chosen = joint.orientation.recommended
    good = outdir / "good.h5"
    flags = [
        "--dp-orient",
        chosen.dp_orient,
        "--x-direction",
        f"{chosen.x_direction:+d}",
        "--y-direction",
        f"{chosen.y_direction:+d}",
    ]
    run(
        [
            "reconstruct",
            str(scan_path),
            *flags,
            "--probe-search",
            "--iterations",
            str(ITERATIONS),
            "--output",
            str(good),
            "--quiet",
            "--backend",
            "numpy",
        ]
    )
    # 5. the twin: patterns turned by 180 degrees, opposite defocus
    from bluesky_ptycho.calibration.orientation import compose

    twin = outdir / "twin.h5"
    twin_flags = [
        "--dp-orient",
        compose("rot180", chosen.dp_orient),
        *flags[2:],
        "--probe-propagation-m",
        f"{-joint.distance_m:.6g}",
    ]
    run(
        [
            "reconstruct",
            str(scan_path),
            *twin_flags,
            "--iterations",
            str(ITERATIONS),
            "--output",
            str(twin),
            "--quiet",
            "--backend",
            "numpy",
        ]
    )

    with h5py.File(scan_path, "r") as f:
        truth = f["/entry_1/sample_1/simulation/object"][()]
        truth_origin = tuple(f["/entry_1/sample_1/simulation/origin_m"][()])
    results = {
        "defaults (identity, cold start)": load(naive),
        f"{chosen.dp_orient}, z {joint.distance_m * 1e6:+.0f} um": load(good),
        "its twin (conjugate)": load(twin),
    }
    figure_reconstructions(results, truth, truth_origin)
    figure_probe(load(good))
    print(f"pictures written to {IMAGES}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.mkdir(parents=True, exist_ok=True)
        main(target)
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder))
