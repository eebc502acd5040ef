# bluesky-ptycho: live ptychography reconstruction of every ptychography scan.
#
# Copy this file into the beamline's IPython profile startup folder, e.g.
# ~/.ipython/profile_collection/startup/50-ptycho.py, after the file that
# creates the RunEngine `RE` (and, if you store data in Tiled, the client).
# See docs/usage.md for every setting and what happens at the end of a run.

from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_profile

from bluesky_ptycho.callback import PtychoCallback

# Where derived runs (the reconstructions) go: any callable emit(name, doc).
# Here: the beamline's Tiled server (adapt the profile name), through a TiledWriter
# of its own; documents arrive from the callback's publisher thread, never from
# the RunEngine's. Use None to keep results only in memory (ptycho.last_result).
ptycho_emit = TiledWriter(from_profile("beamline"), batch_size=1)

ptycho = PtychoCallback(
    ptycho_emit,
    # ---- geometry (per scan, the start document's `ptycho` dict wins) ----
    energy_kev=12.0,  # photon energy, keV (or put it in the start metadata per scan)
    distance_m=0.5,  # sample-detector distance, metres
    detector_pixel_m=75e-6,  # detector pixel pitch, metres (square pixels)
    # frame_shape is taken from the detector's data key; set it only to override.
    dp_orient="rot90_cw",  # D4 transform of each frame as recorded (HXN Merlin needed rot90_cw)
    x_direction=1,  # +1 / -1: sign of the x motor relative to the object x axis
    y_direction=1,  # +1 / -1: same for y
    position_scale_m=1e-6,  # metres per motor unit (1e-6: motors in micrometres)
    # saturation_counts=60_000,  # exclude pixels at or above this count (per frame)
    # probe_path="/nsls2/data/hxn/probes/probe_12kev.npy",  # warm-start probe
    # beam_center_px=(128.0, 127.5),  # direct beam on the frame as recorded (default: centre)
    # object_smoothness=0.01,  # Gaussian prior on the object: less grain at a low dose
    # frame_storage="counts",  # GPU memory per frame: "farfields" (default), "counts", "stacks"
    # ---- which data keys hold the frames and positions ----
    image_key="merlin1_image",  # detector image data key
    x_key="zpssx",  # horizontal position data key (motor units)
    y_key="zpssy",  # vertical position data key
    # ---- when to iterate ----
    min_frames=8,  # frames before the first iteration while the scan runs
    refine_iterations=100,  # iterations after the stop document
    new_run_policy="finish",  # "finish": the next scan waits for this refinement; "preempt"
    # ---- plumbing (defaults are fine) ----
    backend="auto",  # "cupy" on a GPU host, "numpy" otherwise
    # gpus=(0, 1),  # one scan's frames over several GPUs (NCCL); default: the current GPU
    warm_up="auto",  # compile the GPU kernels now, in the background (auto: on CuPy)
    snapshot_interval_s=1.0,  # seconds between live progress events
    max_queued_frames=4096,  # soft bound of the hand-off queue (then it grows, never drops)
    file_timeout_s=30.0,  # after the scan, how long unwritten files are retried
    scan_duty_cycle="auto",  # time share of iterating in a scan ("auto": 0.25 on few CPU cores)
    # handler_registry={"AD_EIGER": EigerHandler},  # more specs (NPY_SEQ, AD_HDF5 built in)
    # root_map={"/old/root": "/new/root"},  # data moved since acquisition
    # require_metadata=True,  # only scans started with ptycho={...} metadata
)
RE.subscribe(ptycho)  # noqa: F821 (the profile's RunEngine)

# Per scan, override any setting in the start document, e.g.
#   RE(fly2d(...), ptycho={"energy_kev": 9.0, "refine_iterations": 200})
# and skip reconstruction of a scan that has the detector and motors with
#   RE(plan, ptycho=False)
# In a script, wait for the result:  ptycho.wait(timeout=600); ptycho.last_result
