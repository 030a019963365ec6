"""The amalgam app: choose teachers, watch the amalgamation, try the student, publish it.

    python app.py                      # http://127.0.0.1:7860, runs saved under ./runs
    python app.py --runs-dir runs --port 7861 --max-runs 2

The page and its logic live in ``amalgam/app/``; this file only parses the command line and launches.
"""

from __future__ import annotations

import argparse

from amalgam.app import RunManager, build_app


def main() -> None:
    parser = argparse.ArgumentParser(description="Start the amalgam Gradio app.")
    parser.add_argument("--runs-dir", default="runs", help="where runs are saved and listed from (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-runs", type=int, default=1, help="runs trained at once; later ones wait in a queue")
    args = parser.parse_args()
    manager = RunManager(args.runs_dir, max_concurrent=args.max_runs)
    try:
        build_app(args.runs_dir, manager).launch(server_name=args.host, server_port=args.port)
    finally:
        manager.shutdown()  # a run still going is cancelled, not waited for


if __name__ == "__main__":
    main()
