"""``bluesky-ptycho view``: watch a reconstruction's Tiled live nodes from any machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._options import positive_float

NAME = "view"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        NAME,
        help="watch live reconstructions through Tiled subscriptions (window or PNG frames)",
        description=(
            "Follow the Tiled live nodes that PtychoCallback(tiled=...) writes "
            "(<path>/<raw uid>/live, docs/outputs.md): amplitude, phase, probe, error curve "
            "and frames used, redrawn on every update the server pushes (no polling)."
        ),
    )
    parser.add_argument("--tiled", required=True, help="Tiled URI, e.g. http://host:8000/api/v1")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--uid", help="raw run uid to watch")
    which.add_argument(
        "--latest",
        action="store_true",
        help="watch the newest run (or the next one to start when there is none; the default)",
    )
    parser.add_argument(
        "--follow", action="store_true", help="after a run ends, follow the next new run"
    )
    parser.add_argument("--path", default="ptycho", help="node path of the live nodes (ptycho)")
    parser.add_argument(
        "--png", type=Path, metavar="DIR", help="write PNG frames to DIR instead of a window"
    )
    parser.add_argument(
        "--timeout", type=positive_float, help="give up after this many seconds (none)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    from tiled.client import from_uri

    from ..viewer import TiledFollower
    from ..viewer.figure import new_figure, save_png

    client = from_uri(args.tiled)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        if args.png is not None:
            figure = new_figure()
            written: list[Path] = []

            def on_state(state) -> None:
                path = args.png / f"{state.raw_uid[:8]}-{len(written) + 1:04d}.png"
                written.append(save_png(state, path, figure))

            follower = TiledFollower(
                client, on_state, args.path, args.uid, latest=True, follow=args.follow
            )
            follower.start()
            print(f"watching {args.tiled} {args.path}: PNG frames to {args.png}", flush=True)
            ended = follower.wait(None if deadline is None else deadline - time.monotonic())
            follower.stop()
            print(f"wrote {len(written)} frame(s) to {args.png}", flush=True)
            return 0 if ended or args.follow else 2
        return _window(client, args, deadline)
    finally:
        client.context.close()


def _window(client, args: argparse.Namespace, deadline: float | None) -> int:
    """A pyplot window redrawn from the main thread with the newest picture."""
    import threading
    import time

    import matplotlib.pyplot as plt

    from ..viewer import TiledFollower
    from ..viewer.figure import draw, new_figure

    figure = new_figure(pyplot=True)
    lock = threading.Lock()
    pending: list = []

    def on_state(state) -> None:
        with lock:
            pending[:] = [state]

    follower = TiledFollower(client, on_state, args.path, args.uid, latest=True, follow=args.follow)
    follower.start()
    plt.show(block=False)
    while plt.fignum_exists(figure.number):
        if deadline is not None and time.monotonic() > deadline:
            break
        with lock:
            state = pending.pop() if pending else None
        if state is not None:
            draw(figure, state)
            figure.canvas.draw_idle()
        plt.pause(0.2)
    follower.stop()
    return 0
