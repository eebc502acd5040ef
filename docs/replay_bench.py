"""Replay benchmark: store a simulated raw run in an embedded Tiled server, then time
``bluesky-ptycho replay`` on it (frames/s read, and read + reconstructed).

    PYTHONPATH=. python docs/replay_bench.py FRAMES FRAME_SIZE REFINE_ITERATIONS
"""

import sys
import tempfile
import time

import bluesky.plans as bp
from bluesky import RunEngine
from bluesky.callbacks.buffer import BufferingWrapper
from bluesky_tiled_plugins import TiledWriter
from tiled.client import from_uri
from tiled.server import SimpleTiledServer

from bluesky_ptycho import cli
from bluesky_ptycho.sim.beamline import make_beamline
from bluesky_ptycho.tools.demo import close_server

frames, size, refine = (int(a) for a in sys.argv[1:4])
server = SimpleTiledServer(directory=tempfile.mkdtemp())
client = from_uri(server.uri)
beamline = make_beamline(size, max_points=frames)
x, y = beamline.positions_um(frames)
writer = BufferingWrapper(TiledWriter(client, batch_size=256))
RE = RunEngine({})
RE.subscribe(writer)
started = time.perf_counter()
(uid,) = RE(
    bp.list_scan([beamline.inline_detector()], beamline.sx, list(x), beamline.sy, list(y)),
    ptycho=beamline.metadata("det_image"),
)
writer.shutdown(wait=True)
print(f"stored {frames} frames of {size}x{size} in {time.perf_counter() - started:.1f} s")
args = ["replay", "--tiled", server.uri, "--uid", uid, "--refine-iterations", str(refine)]
cli.main([*args, "--backend", "numpy", "--no-store", "--quiet"])
client.context.close()
close_server(server)
