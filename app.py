"""The amalgam app: choose teachers, watch the amalgamation, try the student, publish it.

    python app.py                      # http://127.0.0.1:7860, runs saved under ./runs
    python app.py --runs-dir runs --port 7861 --max-runs 2
    python app.py --host 0.0.0.0 --allow-paths /srv/models   # on the network: server folders only under these
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7861 python app.py  # Gradio's variables; flags win over them

The page and its logic live in ``amalgam/app/``; this file only parses the command line and launches.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from amalgam.app import APP_CSS, RunManager, build_app
from amalgam.app.paths import PathPolicy
from amalgam.paths import amalgam_home


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535 (GRADIO_SERVER_PORT or --port), "
                                         f"got {text!r}")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the amalgam Gradio app.")
    parser.add_argument("--runs-dir", default="runs", help="where runs are saved and listed from (default: runs)")
    # Gradio's own variables are the defaults (Spaces and containers set them), a flag given wins over them;
    # argparse passes a string default through type=, so a bad GRADIO_SERVER_PORT is reported like a bad --port
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (0.0.0.0: the whole network; default: $GRADIO_SERVER_NAME or "
                             "127.0.0.1)")
    parser.add_argument("--port", type=_port, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                        help="default: $GRADIO_SERVER_PORT or 7860")
    parser.add_argument("--max-runs", type=int, default=1, help="runs trained at once; later ones wait in a queue")
    parser.add_argument("--allow-paths", action="append", default=[], metavar="DIR",
                        help="a server folder the page may name as a teacher or data (repeatable). Beyond "
                             "127.0.0.1 no other server folder is accepted; on 127.0.0.1 any is, unless this is given")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    manager = RunManager(args.runs_dir, max_concurrent=args.max_runs)
    paths = PathPolicy.for_host(args.host, allowed=args.allow_paths,
                                own=[amalgam_home() / "zoo", Path(args.runs_dir) / ".uploads"])
    try:
        build_app(args.runs_dir, manager, paths).launch(server_name=args.host, server_port=args.port,
                                                        css=APP_CSS)
    finally:
        manager.shutdown()  # a run still going is cancelled, not waited for


if __name__ == "__main__":
    main()
