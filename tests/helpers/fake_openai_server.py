"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, driven by a per-request
script, for testing ``OpenAIJudge`` without a network or sleeps."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FakeServer"]


class FakeServer:
    """Chat-completions endpoint whose behaviour per request comes from a script.

    Script items: ``"echo"`` replies ``#thescore: N`` where N follows ``SCORE=N`` in the
    judged reply; ``("status", code, body, headers)`` fails; ``"hang"`` never answers until
    the test ends; ``"close"`` drops the connection; ``("content", text)`` replies with that
    message; ``("raw", bytes)`` sends that body; ``("trickle", bytes, gap)`` sends that body one
    byte every ``gap`` seconds. When the script runs out, ``"echo"`` is used.
    """

    def __init__(self, script=(), hold_until_inflight: int | None = None, total: int = 0):
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Condition()
        self.inflight = 0
        self.max_inflight = 0
        self.hold_until_inflight = hold_until_inflight
        self.total = total
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                    action = server.script.pop(0) if server.script else "echo"
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                    server.lock.notify_all()
                    if server.hold_until_inflight:
                        server.lock.wait_for(
                            lambda: (
                                server.inflight >= server.hold_until_inflight
                                or len(server.requests) >= server.total
                            ),
                            timeout=5,
                        )
                try:
                    self._act(action, body)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def _act(self, action, body):
                if action == "hang":
                    server.release.wait(10)
                    return
                if action == "close":  # drop the connection without any reply
                    self.close_connection = True
                    return
                if action == "echo":
                    text = body["messages"][0]["content"]
                    n = re.search(r"SCORE=(\d)", text).group(1)
                    self._json(
                        {
                            "choices": [
                                {
                                    "message": {
                                        "role": "assistant",
                                        "content": f"#thereason: fake analysis\n#thescore: {n}",
                                    }
                                }
                            ]
                        }
                    )
                elif action[0] == "content":
                    self._json({"choices": [{"message": {"content": action[1]}}]})
                elif action[0] == "raw":
                    self._send(200, action[1], {})
                elif action[0] == "trickle":
                    data, gap = action[1], action[2]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        if server.release.wait(gap):
                            return
                elif action[0] == "status":
                    _, code, text, headers = action
                    self._send(code, text.encode(), headers)

            def _json(self, payload):
                self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

            def _send(self, code, data, headers):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
