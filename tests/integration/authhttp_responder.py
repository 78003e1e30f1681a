"""A small auth service speaking nginx's mail auth_http protocol (issue 17).

Answers GET requests from nginx's mail proxy or Portcullis' authhttp client from a table
user -> Answer. HTTP/1.1 with Content-Length: 0, so a client may keep the connection alive; every
accepted TCP connection is counted (keep-alive is observable) and every request's headers are
recorded (what the client sent is observable).

    r = Responder({"alice": Answer(server="127.0.0.1", port=1143)}).start()
    r.url("/auth") ... r.connections, r.requests ... r.stop()

Responder(table, tls=(cert, key)) serves https. Paths: any path answers from the table; "/status/NNN" answers HTTP NNN; the user "slow" (or
Answer(delay=s)) sleeps before answering. Unknown users get "Invalid login or password" with
Auth-Wait: 1. Run as a script for manual use: `authhttp_responder.py PORT`.
"""

from __future__ import annotations

import http.server
import ssl
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass


@dataclass
class Answer:
    status: str = "OK"            # Auth-Status: "OK" or the refusal text
    server: str | None = None     # Auth-Server
    port: int | None = None       # Auth-Port
    user: str | None = None       # Auth-User toward the backend
    password: str | None = None   # Auth-Pass toward the backend
    wait: int | None = None       # Auth-Wait seconds
    error_code: str | None = None  # Auth-Error-Code
    delay: float = 0.0            # seconds to sleep before answering


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.owner.lock:
            self.server.owner.connections += 1

    def log_message(self, fmt, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        owner = self.server.owner
        hdrs = {k: v for k, v in self.headers.items()}
        with owner.lock:
            owner.requests.append((self.path, hdrs))
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # nginx escapes Auth-User/Auth-Pass (space, %, control bytes as %XX)
        user = urllib.parse.unquote(hdrs.get("Auth-User", ""))
        ans = owner.table.get(user)
        if ans is None:
            ans = Answer(status="Invalid login or password", wait=1)
        if user == "slow" or ans.delay:
            time.sleep(ans.delay or 2.0)
        self.send_response(200)
        self.send_header("Auth-Status", ans.status)
        for name, val in (("Auth-Server", ans.server), ("Auth-Port", ans.port),
                          ("Auth-User", ans.user), ("Auth-Pass", ans.password),
                          ("Auth-Wait", ans.wait), ("Auth-Error-Code", ans.error_code)):
            if val is not None:
                self.send_header(name, str(val))
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and closed: the late answer's broken pipe is expected


class Responder:
    def __init__(self, table: dict[str, Answer], host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None):
        self.table = dict(table)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.httpd = _Server((host, port), _Handler)
        self.httpd.owner = self
        self.scheme = "http"
        if tls:  # (cert, key): https, the handshake done by the accepting thread
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "Responder":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str = "/auth") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.connections = 0
            self.requests.clear()


if __name__ == "__main__":
    r = Responder({"alice": Answer(server="127.0.0.1", port=143)},
                  port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(r.url(), flush=True)
    try:
        r.thread.join()
    except KeyboardInterrupt:
        r.stop()
