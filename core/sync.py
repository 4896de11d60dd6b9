"""``python -m core.sync <run dir | mlflow-pending.jsonl> [--uri URI]``: send the logging calls a run
could not make while its MLflow server was down (see :mod:`core.tracking`), in their order.

The calls keep their original timestamps and steps, so the run's charts look as if the server had
never gone away. ``--uri`` sends them to another server (the team's server moved).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.tracking import PENDING, TrackingError, check_store, replay
from core.util.files import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help=f"a run folder (holding {PENDING}) or the file itself")
    parser.add_argument("--uri", help="send to this tracking URI instead of the one the run used")
    args = parser.parse_args(argv)
    spool = args.path / PENDING if args.path.is_dir() else args.path
    if not spool.is_file():
        print(
            f"nothing to send: {spool} does not exist (every call reached the server, or it was sent already)",
            file=sys.stderr,
        )
        return 0
    lines = [line for line in spool.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        spool.unlink()
        return 0
    first = json.loads(lines[0])
    uri = args.uri or first["uri"]
    try:
        check_store(uri)
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    if args.uri:  # every waiting call goes to the new server (a line cut short by a kill is left as it is)
        atomic_write_text(spool, "".join(_retarget(line, uri) + "\n" for line in lines))
    total = len(lines)
    sent = replay(spool, MlflowClient(uri))
    if spool.is_file():
        print(
            f"error: sent {sent} of {total} calls to {uri}, then it stopped answering; run this again to send the rest",
            file=sys.stderr,
        )
        return 2
    print(f"sent {sent} logging calls of run {first['run_id']} to {uri}")
    return 0


def _retarget(line: str, uri: str) -> str:
    try:
        return json.dumps({**json.loads(line), "uri": uri})
    except json.JSONDecodeError:
        return line


if __name__ == "__main__":
    sys.exit(main())
