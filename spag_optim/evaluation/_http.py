"""One HTTP POST with the guarantees an API key needs, on the standard library alone.

``urllib`` alone would follow redirects (re-sending the ``Authorization`` header to whatever
address a ``Location`` names), bound each socket read but not the whole request (a server that
trickles a byte at a time never times out), and read a reply of any size. :func:`post` closes
those three holes: redirects are returned as a :class:`Reply` with their status and location,
never followed; a watchdog shuts the socket down when the request's total deadline passes; and
the body is read up to a cap. Proxies configured in the environment still work, as with
``urllib.request.urlopen``.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message

__all__ = ["Reply", "DeadlineExceeded", "BodyTooLarge", "post"]


class DeadlineExceeded(TimeoutError):
    """The request did not finish within its total deadline."""


class BodyTooLarge(ValueError):
    """The reply body is larger than the cap."""


@dataclass(frozen=True)
class Reply:
    """Status, headers and body (at most the cap) of one HTTP reply."""

    status: int
    headers: Message
    body: bytes


class _Deadline:
    """Shuts every socket of one request down once ``seconds`` have passed."""

    def __init__(self, seconds: float):
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:  # wakes a blocked recv(): it returns end-of-file and the read fails
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _watched(base: type, deadline: _Deadline) -> type:
    class Connection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._conn = _watched(http.client.HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._conn, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._conn = _watched(http.client.HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._conn, req, context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Declines every redirect, so the 3xx reply comes back to the caller as it is."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post(
    url: str, body: bytes, headers: dict[str, str], *, timeout: float, max_bytes: int
) -> Reply:
    """POST ``body`` and return the reply, whatever its status (3xx included, not followed).

    ``timeout`` bounds the whole request (connecting, sending, the headers and the body), and
    each socket operation. Raises :class:`DeadlineExceeded` when it passes,
    :class:`BodyTooLarge` for a body over ``max_bytes``, and ``OSError`` /
    ``http.client.HTTPException`` for transport failures.
    """
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(
        _NoRedirect, _HTTPHandler(deadline), _HTTPSHandler(deadline)
    )
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    start = time.monotonic()
    try:
        try:
            reply = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as err:  # non-2xx: still a reply to read
            reply = err
        with reply:
            data = reply.read(max_bytes + 1)
            status = reply.status if reply.status is not None else reply.code
            reply_headers = reply.headers
    except Exception as err:
        if (
            deadline.expired
            or isinstance(err, TimeoutError)
            or isinstance(getattr(err, "reason", None), TimeoutError)
        ):
            raise DeadlineExceeded(f"no complete reply within {timeout:g}s") from None
        raise
    finally:
        deadline.cancel()
    if deadline.expired or time.monotonic() - start > timeout:
        raise DeadlineExceeded(f"no complete reply within {timeout:g}s")
    if len(data) > max_bytes:
        raise BodyTooLarge(f"reply body larger than {max_bytes} bytes")
    return Reply(status, reply_headers, data)
