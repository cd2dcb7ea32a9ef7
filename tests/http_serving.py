"""HTTP servers for tests that read stores over the network: ``python -m http.server`` semantics (byte
ranges ignored, the whole file sent with 200) or a server that honours single byte ranges (206), as nginx, S3
and GCS do. Both run in a thread of the test process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _handler(directory: Path, ranges: bool):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(directory), **kw)

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
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
def serve(directory: str | Path, ranges: bool) -> Iterator[str]:
    """Serve ``directory``; yields the base URL ``http://127.0.0.1:PORT``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(directory), ranges))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
