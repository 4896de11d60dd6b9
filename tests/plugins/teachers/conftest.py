"""Teacher-test fixtures: a loopback HTTP file server standing in for GitHub releases."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest


@attrs.define
class FileServer:
    """Serves ``root`` at ``url``; ``gets`` counts the GET requests it answered."""

    root: Path
    url: str
    gets: list[str] = attrs.Factory(list)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """A threaded ``http.server`` on 127.0.0.1 (port picked by the OS) serving a fresh folder."""
    root = tmp_path / "served"
    root.mkdir()
    gets: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            gets.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(root, f"http://127.0.0.1:{server.server_address[1]}", gets)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
