"""HTTP servers for tests that read stores over the network: ``python -m http.server`` semantics (byte
ranges ignored, the whole file sent with 200) or a server that honours single byte ranges (206), as nginx, S3
and GCS do. Both run in a thread of the test process on a free 127.0.0.1 port, and can be made to misbehave:
stall (accept requests and never answer) or die (stop listening) when a chosen path is first asked for."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
import time
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Behaviour:
    """What a :func:`serve` server does, changeable while it runs: ``stall`` set → every request waits until
    it is cleared (a stopped or overloaded server: the connection is accepted, no answer comes); a path
    matching ``die_on`` → the server stops listening and drops that request (a killed server). ``paths``
    lists the paths asked for, in order."""

    def __init__(self, die_on: str | None = None) -> None:
        self.stall = threading.Event()
        self.die_on = re.compile(die_on) if die_on else None
        self.paths: list[str] = []
        self.dead = threading.Event()
        self.server: http.server.ThreadingHTTPServer | None = None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up on a stalled answer: expected
        pass


def _die(server: http.server.ThreadingHTTPServer) -> None:
    """Stop accepting, then close the listening socket: later connections are refused."""
    server.shutdown()
    server.socket.close()


def _handler(directory: Path, ranges: bool, behaviour: Behaviour):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def log_message(self, *args):  # keep test output quiet
            pass

        def _misbehave(self) -> bool:
            """True when the request is not to be answered."""
            behaviour.paths.append(self.path)
            while behaviour.stall.is_set():
                time.sleep(0.02)
            if behaviour.dead.is_set() or (behaviour.die_on and behaviour.die_on.search(self.path)):
                if not behaviour.dead.is_set():
                    behaviour.dead.set()
                    threading.Thread(target=_die, args=(behaviour.server,), daemon=True).start()
                self.close_connection = True
                return True
            return False

        def do_HEAD(self):
            if not self._misbehave():
                super().do_HEAD()

        def do_GET(self):
            if self._misbehave():
                return
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", (self.headers.get("Range") or "").strip())
            path = Path(self.translate_path(self.path))
            if not ranges or not m or not path.is_file():
                return super().do_GET()
            data = path.read_bytes()
            first, last = m.groups()
            if first == "":
                start, end = max(0, len(data) - int(last)), len(data) - 1
            else:
                start, end = int(first), min(len(data) - 1, int(last)) if last else len(data) - 1
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(data[start : end + 1])

    return Handler


@contextlib.contextmanager
def serve(directory: str | Path, ranges: bool, behaviour: Behaviour | None = None) -> Iterator[str]:
    """Serve ``directory``; yields the base URL ``http://127.0.0.1:PORT``. ``behaviour`` makes it misbehave
    on demand (:class:`Behaviour`)."""
    behaviour = behaviour or Behaviour()
    server = _Server(("127.0.0.1", 0), _handler(Path(directory), ranges, behaviour))
    behaviour.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        behaviour.stall.clear()
        server.shutdown()
        server.server_close()
