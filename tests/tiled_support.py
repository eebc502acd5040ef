"""Helpers for the tests that use a real embedded Tiled server (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bluesky.plans as bp
from bluesky import RunEngine

from bluesky_ptycho.sim.beamline import DEFAULT_STEP_FRACTION, make_beamline
from bluesky_ptycho.tools.demo import close_server

API_KEY = "ptychotest"


class TiledServer:
    """A ``SimpleTiledServer`` on 127.0.0.1 that can be stopped and started again
    (same folder, port and API key), as a restarting server would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.server: Any = None
        self._clients: list[Any] = []
        self.start()

    def start(self) -> None:
        from tiled.server import SimpleTiledServer

        self.server = SimpleTiledServer(directory=self.directory, api_key=API_KEY, port=self.port)
        self.port = urlparse(self.server.uri).port
        self.uri = self.server.uri

    def stop(self) -> None:
        """Stop the server (the clients made by :meth:`client` stay usable after a restart)."""
        if self.server is not None:
            close_server(self.server)
            self.server = None

    def client(self) -> Any:
        """A client, closed by :meth:`close`."""
        from tiled.client import from_uri

        client = from_uri(self.uri)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the clients, then stop the server."""
        for client in self._clients:
            client.context.close()
        self.stop()


def simulated_scan(
    points: int = 100,
    frame_size: int = 64,
    exposure_s: float = 0.01,
    seed: int = 0,
    step_fraction: float = DEFAULT_STEP_FRACTION,
):
    """(beamline, RunEngine, plan, ptycho metadata) of a Fermat-spiral step scan, inline images."""
    beamline = make_beamline(frame_size, step_fraction, max_points=points, seed=seed)
    beamline.exposure_s = exposure_s
    x, y = beamline.positions_um(points)
    detector = beamline.inline_detector()
    plan = bp.list_scan([detector], beamline.sx, list(x), beamline.sy, list(y))
    return beamline, RunEngine({}), plan, beamline.metadata("det_image")
