"""Calibration from the data: beam estimate, defocus search, orientation detection, warm starts.

Every claim is checked numerically against a simulation's ground truth. The
orientation tests plant a convention by transforming one simulated scan -
frames turned by the inverse D4 transform, motor readings multiplied by the
signs - which is exactly what simulating with that configuration produces.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import h5py
import numpy as np
import pytest

from bluesky_ptycho import Reconstructor, cli
from bluesky_ptycho.calibration import (
    calibrate,
    detect_orientation,
    estimate_beam,
    format_defocus_table,
    prepare_trials,
    relation,
    search_probe_propagation,
)
from bluesky_ptycho.calibration.joint import REPRESENTATIVES
from bluesky_ptycho.calibration.orientation import candidates, rank_candidates, to_motor_frame
from bluesky_ptycho.calibration.trials import crop_centre, resample_probe
from bluesky_ptycho.callback.run import ADVICE_NAMES
from bluesky_ptycho.commands.detect_orientation import ADVICE_FLAGS
from bluesky_ptycho.config import D4_ORIENTATIONS
from bluesky_ptycho.cxi import write_cxi
from bluesky_ptycho.engine.orientation import inverse_orientation, orient_frames
from bluesky_ptycho.engine.propagation import propagate
from bluesky_ptycho.metrics import COVERED_RELATIVE, crop_truth, object_nrmse, snapshot_nrmse
from bluesky_ptycho.sim.sample import SimulatedSample, default_config, scan_positions, simulate_scan

TARGET_NRMSE = 0.10
#: trial size of the orientation sweeps in these tests (smaller than the defaults)
SWEEP = {"n_frames": 32, "iterations": 8, "backend": "numpy"}

# ----------------------------------------------------------------------------- helpers


def compose(outer: str, inner: str) -> str:
    """The D4 name of ``outer`` applied after ``inner`` (found by applying both)."""
    probe = np.arange(9).reshape(3, 3)
    target = orient_frames(orient_frames(probe, inner), outer)
    return next(n for n in D4_ORIENTATIONS if np.array_equal(orient_frames(probe, n), target))


def mirror_class(key: tuple[str, int, int]) -> set[tuple[str, int, int]]:
    """A candidate and its three mirrors: patterns mirrored with the matching motor sign."""
    name, sx, sy = key
    return {
        key,
        (compose("fliplr", name), -sx, sy),
        (compose("flipud", name), sx, -sy),
        (compose("rot180", name), -sx, -sy),
    }


def twin_class(key: tuple[str, int, int]) -> set[tuple[str, int, int]]:
    """The twins of a candidate: its mirrors with the patterns turned by 180 degrees."""
    return {(compose("rot180", n), sx, sy) for n, sx, sy in mirror_class(key)}


def plant(frames: np.ndarray, x: np.ndarray, y: np.ndarray, key: tuple[str, int, int]):
    """Frames and motor readings as recorded by a setup that needs ``key`` to reconstruct.

    ``frames``, ``x``, ``y`` are in engine orientation with +1 directions.
    """
    name, sx, sy = key
    return np.ascontiguousarray(orient_frames(frames, inverse_orientation(name))), x * sx, y * sy


def asymmetric_probe(config, semiangle_rad=0.96e-3, defocus_m=60e-6, stop=0.4, strut=0.25):
    """A zone-plate probe with a central stop and an L-shaped support strut.

    The strut (one arm along +x, one along +y in the pupil) makes the probe
    symmetric under no mirror of the detector axes and not its own twin.
    """
    rows, cols = config.frame_shape
    pupil_px = semiangle_rad * config.distance_m / config.detector_pixel_m
    fy = np.fft.fftfreq(rows)[:, None] * rows
    fx = np.fft.fftfreq(cols)[None, :] * cols
    radius = np.hypot(fy, fx) / pupil_px
    arm = strut * pupil_px
    pupil = (radius <= 1) & (radius >= stop)
    pupil &= ~((np.abs(fy) < arm) & (fx > 0)) & ~((np.abs(fx) < arm) & (fy > 0))
    focus = np.fft.fftshift(np.fft.ifft2(pupil.astype(np.complex128)))
    probe = propagate(focus, defocus_m, config.object_pixel_m, config.wavelength_m)
    return probe / np.sqrt((np.abs(probe) ** 2).sum())


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def defocused_scan():
    """A zone plate with a central stop, 3.5 depths of focus out of focus (120 um)."""
    return simulate_scan(
        default_config(64),
        n_frames=100,
        seed=0,
        semiangle_rad=2e-3,
        defocus_m=120e-6,
        central_stop=0.4,
    )


@pytest.fixture(scope="module")
def asymmetric_scan():
    """Default geometry with the asymmetric probe; frames in engine orientation, +1 signs."""
    config = default_config(64)
    x_m, y_m = scan_positions(config, 100)
    extent = 2 * float(max(np.abs(x_m).max(), np.abs(y_m).max()))
    sample = SimulatedSample.create(config, extent, 1e6, seed=0)
    probe = asymmetric_probe(config)
    sample = dataclasses.replace(sample, probe=(probe * 1e3).astype(np.complex64))
    x, y = x_m / config.position_scale_m, y_m / config.position_scale_m
    return sample, sample.frames(x, y, 1), x, y, probe


# ------------------------------------------------------------------- beam and trials


@pytest.mark.parametrize(("semiangle_rad", "stop"), [(0.96e-3, 0.0), (2e-3, 0.4)])
def test_beam_estimate_reads_the_convergence_angle(semiangle_rad, stop):
    scan = simulate_scan(
        default_config(64), n_frames=30, semiangle_rad=semiangle_rad, central_stop=stop
    )
    beam = estimate_beam(scan.frames, scan.config)
    assert beam.semiangle_rad == pytest.approx(semiangle_rad, rel=0.05)
    assert beam.depth_of_focus_m == pytest.approx(
        scan.config.wavelength_m / semiangle_rad**2, rel=0.1
    )
    field_of_view = scan.config.frame_shape[1] * scan.config.object_pixel_m[1]
    assert 2 * semiangle_rad * beam.max_defocus_m == pytest.approx(0.75 * field_of_view, rel=0.05)


def test_trials_crop_odd_around_dc_and_resample_the_probe():
    config = default_config(64)
    probe = asymmetric_probe(config)
    scan = simulate_scan(config, n_frames=60)
    trials = prepare_trials(
        scan.frames, scan.x_motor, scan.y_motor, config.replace(probe=probe), 20
    )
    size = trials.crop_px
    assert size % 2 == 1 and trials.frames.shape == (20, size, size)
    # the 20 frames nearest the median position, cropped around pixel (32, 32)
    distance = np.hypot(
        scan.x_motor - np.median(scan.x_motor), scan.y_motor - np.median(scan.y_motor)
    )
    assert set(trials.indices) == set(np.argsort(distance)[:20])
    np.testing.assert_array_equal(trials.frames, crop_centre(scan.frames[trials.indices], size))
    assert (
        trials.frames[:, size // 2, size // 2].mean() == scan.frames[trials.indices, 32, 32].mean()
    )
    # the resampled probe is the probe built directly on the coarser grid of the crop
    direct = asymmetric_probe(config.replace(frame_shape=(size, size)))
    resampled = trials.config.probe / np.sqrt((np.abs(trials.config.probe) ** 2).sum())
    np.testing.assert_allclose(resampled, direct, atol=1e-6)
    # a full-size crop of an odd frame changes nothing
    odd = asymmetric_probe(config.replace(frame_shape=(63, 63)))
    np.testing.assert_allclose(resample_probe(odd, 63), odd, atol=1e-12)


def test_joint_search_representatives_cover_the_32_candidates():
    covered = [mirror_class(key) | twin_class(key) for key in REPRESENTATIVES]
    assert all(len(group) == 8 for group in covered)
    assert set().union(*covered) == set(candidates())


def test_relation_classes_have_the_expected_sizes():
    keys = candidates()
    assert len(keys) == len(set(keys)) == 32
    for key in keys:
        relations = [relation(other, key) for other in keys]
        assert relations.count("best") == 1
        assert relations.count("mirror") == 3
        assert relations.count("twin") == 4
        assert {
            k for k, r in zip(keys, relations, strict=True) if r in ("best", "mirror")
        } == mirror_class(key)
        assert {k for k, r in zip(keys, relations, strict=True) if r == "twin"} == twin_class(key)


# -------------------------------------------------------------------------- defocus


def test_defocus_search_rescues_a_cold_start(defocused_scan):
    scan = defocused_scan
    best_m, table = search_probe_propagation(
        scan.frames,
        scan.x_motor,
        scan.y_motor,
        scan.config,
        n_frames=32,
        iterations=8,
        backend="numpy",
    )
    depth_of_focus = scan.config.wavelength_m / 2e-3**2  # 34 um
    assert abs(best_m - 120e-6) <= 0.5 * depth_of_focus, format_defocus_table(table, best_m)
    distances = [row.distance_m for row in table]
    assert distances == sorted(distances) and min(distances) < 0 < max(distances)
    assert best_m in distances

    results = {}
    for label, distance in (("plain cold start", 0.0), ("searched", best_m)):
        rec = Reconstructor(scan.config.replace(probe_propagation_m=distance), backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(25)
        results[label] = snapshot_nrmse(rec.snapshot(), scan.sample.object, scan.sample.origin_m)
        assert rec.snapshot().metrics["probe_propagation_m"] == distance
    # measured: 0.45 (plain) and 0.026 (searched, 114.9 um)
    assert results["plain cold start"] > TARGET_NRMSE, results
    assert results["searched"] <= TARGET_NRMSE, results


def test_defocus_search_with_explicit_distances_and_warm_probe(defocused_scan):
    scan = defocused_scan
    focused = propagate(
        scan.sample.probe.astype(np.complex128),
        -120e-6,
        scan.config.object_pixel_m,
        scan.config.wavelength_m,
    )
    config = scan.config.replace(probe=focused)  # the true probe, brought back to focus
    distances = np.linspace(0, 200e-6, 6)
    best_m, table = search_probe_propagation(
        scan.frames,
        scan.x_motor,
        scan.y_motor,
        config,
        distances,
        n_frames=32,
        iterations=6,
        backend="numpy",
        refine=False,
    )
    assert [row.distance_m for row in table] == pytest.approx(list(distances))
    assert best_m == pytest.approx(120e-6)
    with pytest.raises(ValueError, match="distances must be finite"):
        search_probe_propagation(scan.frames, scan.x_motor, scan.y_motor, config, [np.nan])


# ---------------------------------------------------------------------- orientation


@pytest.mark.parametrize("planted", candidates(), ids="{0[0]}{0[1]:+d}{0[2]:+d}".format)
def test_known_defocus_finds_the_planted_convention_up_to_mirrors(planted, asymmetric_scan):
    """Cold start propagated by the known defocus: the planted candidate and its
    three mirrors tie exactly (same image), every other candidate is worse."""
    sample, frames, x, y, _ = asymmetric_scan
    frames, x, y = plant(frames, x, y, planted)
    config = sample.config.replace(probe_propagation_m=60e-6)
    result = detect_orientation(frames, x, y, config, **SWEEP)
    tied = {c.key for c in result.tied}
    assert tied == mirror_class(planted), result.format_table()
    assert result.verdict == "equivalent"
    spread = max(c.relative for c in result.tied)
    assert spread < 1.001  # exact symmetry: equal NLLs
    assert result.recommended.key in mirror_class(planted)


@pytest.mark.parametrize(
    "planted",
    [
        (name, sx, sy)
        for name, (sx, sy) in zip(
            D4_ORIENTATIONS, itertools.cycle([(1, 1), (-1, 1), (1, -1), (-1, -1)]), strict=False
        )
    ],
    ids="{0[0]}{0[1]:+d}{0[2]:+d}".format,
)
def test_asymmetric_warm_probe_finds_the_exact_planted_convention(planted, asymmetric_scan):
    sample, frames, x, y, probe = asymmetric_scan
    frames, x, y = plant(frames, x, y, planted)
    result = detect_orientation(frames, x, y, sample.config.replace(probe=probe), **SWEEP)
    assert result.best.key == planted, result.format_table()
    assert result.verdict == "unique" and result.recommended.key == planted
    assert result.candidates[1].relative > 1.1


def test_plain_cold_start_reports_the_twin_ambiguity(asymmetric_scan):
    sample, frames, x, y, _ = asymmetric_scan
    planted = ("rot90_cw", -1, 1)
    frames, x, y = plant(frames, x, y, planted)
    result = detect_orientation(frames, x, y, sample.config, **SWEEP)
    assert {c.key for c in result.tied} == mirror_class(planted) | twin_class(planted)
    assert result.verdict == "ambiguous"
    assert "twin" in result.explanation()
    # structured advice: calibration's names by default, a front end's spelling on request
    assert "(probe_propagation_m)" in result.explanation() and "--" not in result.explanation()
    flags = result.explanation(ADVICE_FLAGS)
    assert "(--probe-propagation-m)" in flags and "(--probe)" in flags
    as_settings = result.explanation(ADVICE_NAMES)
    assert "(probe_propagation_m)" in as_settings and "(probe_path)" in as_settings
    (twin,) = [a for a in result.advice() if "twin" in a.problem]
    assert [r.options for r in twin.remedies] == [("probe_propagation_m",), ("probe",)]
    table = result.format_table()
    assert len(table.splitlines()) == 33 and "TIED, twin" in table


def test_ranking_marks_ties_and_prefers_the_current_configuration():
    nll = dict.fromkeys(candidates(), 10.0)
    for key in mirror_class(("transpose", 1, -1)):
        nll[key] = 5.0
    nll[("transpose", 1, -1)] = 4.9
    result = rank_candidates(nll, tolerance=0.05, current=("antitranspose", -1, 1))
    assert result.best.key == ("transpose", 1, -1)
    assert result.verdict == "equivalent" and len(result.tied) == 4
    assert result.recommended.key == ("antitranspose", -1, 1)  # current, a tied mirror: keep it
    assert rank_candidates(nll, tolerance=0.01).verdict == "unique"
    assert "--dp-orient transpose --x-direction +1 --y-direction -1" in result.best.flags()


def test_mirror_candidates_give_the_same_object_in_motor_coordinates():
    """The physics behind the 'mirror' and 'twin' labels, on full reconstructions."""
    scan = simulate_scan(default_config(64), n_frames=100, seed=0)
    truth = scan.sample.object
    errors = {}
    for key in (("identity", 1, 1), ("fliplr", -1, 1), ("identity", -1, -1)):
        config = scan.config.replace(dp_orient=key[0], x_direction=key[1], y_direction=key[2])
        rec = Reconstructor(config, backend="numpy")
        rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
        rec.iterate(30)
        obj, coverage, origin = to_motor_frame(rec.snapshot(), config)
        cropped = crop_truth(truth, scan.sample.origin_m, obj.shape, origin, config.object_pixel_m)
        region = (coverage >= COVERED_RELATIVE) & np.isfinite(cropped)
        errors[key] = (
            object_nrmse(obj, np.nan_to_num(cropped), region),
            object_nrmse(np.conj(obj), np.nan_to_num(cropped), region),
        )
    for key in (("identity", 1, 1), ("fliplr", -1, 1)):
        assert errors[key][0] <= TARGET_NRMSE, errors  # same object in motor coordinates
    assert errors[("identity", -1, -1)][1] <= TARGET_NRMSE, errors  # twin: the conjugate
    assert errors[("identity", -1, -1)][0] > 0.3, errors


def test_calibrate_on_the_first_frames(asymmetric_scan):
    """What a live pipeline would call: cold start, orientation and defocus unknown."""
    sample, frames, x, y, _ = asymmetric_scan
    planted = ("transpose", 1, -1)
    frames, x, y = plant(frames[:50], x[:50], y[:50], planted)
    result = calibrate(
        frames, x, y, sample.config, defocus_sign=1, n_frames=32, iterations=8, backend="numpy"
    )
    chosen = (result.config.dp_orient, result.config.x_direction, result.config.y_direction)
    assert chosen in mirror_class(planted) and chosen[1:] == (1, 1)
    assert result.changes["probe_propagation_m"] > 0 and result.summary["applied"]
    assert result.summary["verdict"] == "equivalent" and len(result.summary["orientation"]) == 32
    json.dumps(result.summary)
    # orientation only, plain cold start: the twin ties, so nothing is applied
    plain = calibrate(
        frames, x, y, sample.config, defocus=False, n_frames=32, iterations=8, backend="numpy"
    )
    assert plain.summary["verdict"] == "ambiguous" and plain.changes == {}
    assert plain.config == sample.config


# -------------------------------------------------------------------------- warm start


@pytest.mark.parametrize("container", ["npy", "h5"])
def test_warm_start_from_another_code(container, tmp_path):
    """A probe stack from a code with unnormalised FFTs: several modes, another scale."""
    scan = simulate_scan(default_config(64), n_frames=100, seed=0)
    modes = np.empty((3, 64, 64), np.complex64)
    modes[0] = scan.sample.probe * 64  # unnormalised forward FFT: sum |P|^2 64^2 times larger
    rng = np.random.default_rng(5)
    modes[1:] = rng.standard_normal((2, 64, 64)) * 50  # weaker incoherent modes, ignored
    if container == "npy":
        path = tmp_path / "probe.npy"
        np.save(path, modes[None])  # (1, 3, M, N): e.g. OPR x modes
        probe_path = str(path)
    else:
        path = tmp_path / "probe.h5"
        with h5py.File(path, "w") as f:
            f["results/probe_modes"] = modes
        probe_path = f"{path}:/results/probe_modes"
    rec = Reconstructor(scan.config.replace(probe_path=probe_path), backend="numpy")
    rec.add_frames(scan.frames, scan.x_motor, scan.y_motor)
    rec.iterate(0)
    initial = rec.snapshot().probe
    photons = float(scan.frames.sum(axis=(1, 2)).mean())
    assert (np.abs(initial) ** 2).sum() == pytest.approx(photons, rel=1e-3)
    np.testing.assert_allclose(
        initial,
        scan.sample.probe * np.sqrt(photons / 1e6),
        rtol=0,
        atol=0.02 * np.abs(initial).max(),
    )
    rec.iterate(20)
    assert snapshot_nrmse(rec.snapshot(), scan.sample.object, scan.sample.origin_m) <= TARGET_NRMSE


# ------------------------------------------------------------------------- command line


def table_keys(printed: str) -> list[tuple[str, int, int]]:
    """(dp_orient, x_direction, y_direction) of the ranked table's rows, in rank order."""
    rows = [line.split() for line in printed.splitlines() if line[:4].strip().isdigit()]
    assert [int(row[0]) for row in rows] == list(range(1, len(rows) + 1))
    return [(row[1], int(row[2]), int(row[3])) for row in rows]


def test_cli_detect_orientation(tmp_path, capsys):
    path = tmp_path / "turned.cxi"
    argv = ["simulate", str(path), "--frames", "60", "--dp-orient", "transpose", "--seed", "2"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    argv = ["detect-orientation", str(path), "--probe-propagation-m", "60e-6", "--frames", "32"]
    assert cli.main([*argv, "--iterations", "8", "--backend", "numpy"]) == 0
    printed = capsys.readouterr().out
    ranked = table_keys(printed)
    assert len(ranked) == 32 and set(ranked) == set(candidates())
    assert set(ranked[:4]) == mirror_class(("transpose", 1, 1))
    assert "equivalent: 4 candidates" in printed
    # the tied mirror with positive directions is recommended: the planted one
    assert "use: dp_orient='transpose', x_direction=+1, y_direction=+1" in printed
    assert "--dp-orient transpose --x-direction +1 --y-direction +1" in printed
    assert printed.count("NLL/pixel") == 32  # progress lines without --quiet
    # the opposite defocus sign selects the twins: orientation and defocus sign go together
    argv = ["detect-orientation", str(path), "--probe-propagation-m", "-60e-6", "--frames", "32"]
    assert cli.main([*argv, "--iterations", "8", "--backend", "numpy", "--quiet"]) == 0
    ranked = table_keys(capsys.readouterr().out)
    assert set(ranked[:4]) == twin_class(("transpose", 1, 1))


def test_cli_reconstruct_probe_search(tmp_path, capsys):
    path = tmp_path / "scan.cxi"
    assert cli.main(["simulate", str(path), "--frames", "60", "--seed", "1"]) == 0
    output = tmp_path / "out.h5"
    argv = ["reconstruct", str(path), "--iterations", "2", "--output", str(output), "--quiet"]
    argv += ["--backend", "numpy", "--probe-search", "--probe-search-range", "-100e-6", "200e-6"]
    argv += ["--probe-search-steps", "4", "--probe-search-frames", "24"]
    assert cli.main([*argv, "--probe-search-iterations", "4"]) == 0
    printed = capsys.readouterr().out
    assert "probe search: best distance" in printed and "(chosen by --probe-search)" in printed
    with h5py.File(output, "r") as f:
        best = float(f.attrs["probe_search_m"])
        distances = f.attrs["probe_search_distances_m"]
        nll = f.attrs["probe_search_nll_per_pixel"]
        assert f.attrs["probe_propagation_m"] == best
        assert distances.shape == nll.shape and len(distances) >= 4
        np.testing.assert_allclose(distances[[0, -1]], [-100e-6, 200e-6])
        assert best == distances[np.argmin(nll)]
    # default range from the data: the bright-field disc of the default probe
    argv = ["reconstruct", str(path), "--iterations", "0", "--output", str(output), "--quiet"]
    argv += ["--backend", "numpy", "--probe-search", "--probe-search-frames", "24"]
    assert cli.main([*argv, "--probe-search-iterations", "4"]) == 0
    with h5py.File(output, "r") as f:
        distances = f.attrs["probe_search_distances_m"]
        assert distances.min() == pytest.approx(-distances.max()) and len(distances) >= 9
    # misuse is reported, not raised
    bad = ["reconstruct", str(path), "--probe-search", "--probe-propagation-m", "1e-6"]
    assert cli.main(bad) == 1
    assert "exclude each other" in capsys.readouterr().err
    assert cli.main(["reconstruct", str(path), "--probe-search-steps", "5"]) == 1
    assert "need --probe-search" in capsys.readouterr().err


def test_cli_detect_orientation_with_defocus_search(tmp_path, capsys):
    """Unknown orientation, signs and defocus of a centrally stopped probe (where a plain
    cold start fits no candidate better than another): the joint search finds the planted
    class of mirrors and the distance; --defocus-sign picks the real twin."""
    planted = ("rot90_cw", 1, -1)
    config = default_config(64, dp_orient=planted[0], x_direction=planted[1], y_direction=-1)
    scan = simulate_scan(
        config, n_frames=80, seed=3, semiangle_rad=2e-3, defocus_m=-100e-6, central_stop=0.4
    )
    path = tmp_path / "stopped.cxi"
    raw_m = np.stack([scan.x_motor, scan.y_motor], axis=1) * config.position_scale_m
    write_cxi(path, scan.frames, raw_m, config)  # motor readings: the signs are not applied
    argv = ["detect-orientation", str(path), "--frames", "32", "--iterations", "8", "--quiet"]
    argv += ["--backend", "numpy", "--probe-search", "--probe-search-range", "-200e-6", "200e-6"]
    assert cli.main([*argv, "--probe-search-steps", "17", "--defocus-sign", "-1"]) == 0
    printed = capsys.readouterr().out
    assert set(table_keys(printed)[:4]) == mirror_class(planted)
    use = next(line for line in printed.splitlines() if line.startswith("use: "))
    chosen = use.split("dp_orient='")[1].split("'")[0]
    directions = (int(use.split("x_direction=")[1][:2]), int(use.split("y_direction=")[1][:2]))
    assert (chosen, *directions) in mirror_class(planted)
    distance = float(use.split("probe_propagation_m=")[1])
    assert distance == pytest.approx(-100e-6, abs=20e-6)
    assert "--probe-propagation-m" in printed.splitlines()[-1]
    # misuse
    assert cli.main(["detect-orientation", str(path), "--defocus-sign", "+1"]) == 1
    assert "need --probe-search" in capsys.readouterr().err


def test_no_beam_advice_is_structured_and_rendered_per_front_end():
    from bluesky_ptycho.calibration import CalibrationError

    config = default_config(32)
    frames = np.zeros((12, 32, 32), np.float32)
    x = y = np.linspace(0.0, 1.0, 12)
    with pytest.raises(CalibrationError) as error:
        search_probe_propagation(frames, x, y, config, n_frames=12, iterations=1)
    assert error.value.advice.remedies[0].options == ("distances_m",)
    assert "(--probe-search-range MIN MAX)" in error.value.render(ADVICE_FLAGS)
    assert "calibrate=" in error.value.render(ADVICE_NAMES)
    assert isinstance(error.value, ValueError)  # existing callers keep catching ValueError
