"""A real HTTP server on 127.0.0.1 for download tests: serves files with Range support, and
misbehaves on purpose (5xx, a dropped connection, a stall) where a test asks it to. POST answers
with a route's status, to imitate an API."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sheldon.serving.server import free_port as free_port  # re-exported: the tests take their ports here


@dataclass
class Route:
    body: bytes
    fail_first: int = 0  # answer the first N requests with 503
    drop_after: int | None = None  # first full request: send this many bytes, then close
    stall_after: int | None = None  # every request: send this many bytes, then go silent
    trickle: int | None = None  # every request: send this many bytes a second (a slow download)
    status: int = 200
    ranges: bool = True  # False: ignore Range headers and send the whole body again (some servers do)


@dataclass
class Server:
    url: str
    routes: dict[str, Route]
    hits: Counter = field(default_factory=Counter)
    ranges: list[str] = field(default_factory=list)  # Range headers received, in order
    stop: threading.Event = field(default_factory=threading.Event)


def start(routes: dict[str, Route]) -> tuple[Server, ThreadingHTTPServer]:
    state = Server("", routes)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            route = state.routes.get(self.path)
            state.hits[self.path] += 1
            if route is None or route.status == 404:
                self.send_error(404, "Not Found")
                return
            if state.hits[self.path] <= route.fail_first:
                self.send_error(503, "Service Unavailable")
                return
            body, start_at = route.body, 0
            header = self.headers.get("Range")
            if header:
                state.ranges.append(header)
            if header and route.ranges:
                start_at = int(header.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start_at}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start_at))
            self.end_headers()
            part = body[start_at:]
            if route.stall_after is not None:
                self.wfile.write(part[: route.stall_after])
                self.wfile.flush()
                state.stop.wait(30)  # silent until the test ends
                return
            if route.trickle is not None:
                for offset in range(0, len(part), route.trickle):
                    if state.stop.wait(1):
                        return
                    try:
                        self.wfile.write(part[offset : offset + route.trickle])
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):  # the client was stopped
                        return
                return
            if route.drop_after is not None and not header:
                self.wfile.write(part[: route.drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

        def do_POST(self) -> None:  # an API imitated: the route's status and body, whatever was asked
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            route = state.routes.get(self.path) or Route(b"", status=404)
            state.hits[self.path] += 1
            self.send_response(route.status)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state, httpd


def stop(state: Server, httpd: ThreadingHTTPServer) -> None:
    state.stop.set()
    time.sleep(0.05)
    httpd.shutdown()
    httpd.server_close()


def silent_listener() -> socket.socket:
    """A socket on 127.0.0.1 that takes connections (the kernel does) and never answers; close it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener
