"""A connection to a dashboard in another process: this process's calls, posted to it as JSON over HTTP.

The calls' renderers only merge their latest fields into a pending batch, so the engine never waits on the
network; a sender thread posts the batch every SEND_INTERVAL seconds (and a heartbeat every HEARTBEAT seconds,
by which the dashboard tells a process gone silent), with the key in a header. Only this, the parent, posts:
workers never talk to the dashboard.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from ._server import KEY_HEADER, PUBLISH_PATH

SEND_INTERVAL = 0.25
HEARTBEAT = 2.0
TIMEOUT = 5.0  # seconds for one post

logger = logging.getLogger("parallelize")


class Connection:
    """Started by the constructor, which first checks that the dashboard takes the key; until close()."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host = host
        self.port = port
        self._key = key
        self._source = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._post({})  # a wrong key or a dashboard that is not there fails here, not later in a thread
        self._thread = threading.Thread(target=self._send_loop, name="parallelize-dashboard-sender", daemon=True)
        self._thread.start()

    def publish(self, call_id: str, fields: dict[str, Any]) -> None:
        with self._wake:
            if not self._closed:
                self._pending.setdefault(call_id, {}).update(fields)

    def close(self) -> None:
        """Send what is pending, then stop the sender."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _send_loop(self) -> None:
        last_post = time.monotonic()
        unreachable = False
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed, timeout=SEND_INTERVAL)
                batch, self._pending = self._pending, {}
                closed = self._closed
            if batch or closed or time.monotonic() - last_post >= HEARTBEAT:
                try:
                    self._post(batch)
                except ValueError as exc:  # the dashboard will never take these: no point sending them again
                    logger.warning("parallelize: the dashboard at %s:%d refused %d call record(s): %s", self.host,
                                   self.port, len(batch), exc)
                except OSError as exc:  # (PermissionError and ConnectionError are OSErrors)
                    with self._wake:
                        for call_id, fields in batch.items():  # kept for the next try, under what came since
                            self._pending[call_id] = {**fields, **self._pending.get(call_id, {})}
                    if not unreachable:
                        logger.warning("parallelize: the dashboard at %s:%d cannot be reached (%s); this process's "
                                       "calls are sent once it can", self.host, self.port, exc)
                    unreachable = True
                else:
                    unreachable = False
                last_post = time.monotonic()
            if closed:
                return

    def _post(self, calls: dict[str, dict[str, Any]]) -> None:
        body = json.dumps({"source": self._source, "calls": calls}).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            connection.request("POST", PUBLISH_PATH, body, {"Content-Type": "application/json", KEY_HEADER: self._key})
            response = connection.getresponse()
            answer = response.read().decode("utf-8", "replace").strip()
        finally:
            connection.close()
        if response.status == 403:
            raise PermissionError(f"the dashboard at {self.host}:{self.port} refused this process: {answer}")
        if response.status in (400, 413):
            raise ValueError(answer)
        if response.status != 204:
            raise ConnectionError(f"the dashboard at {self.host}:{self.port} answered {response.status}: {answer}")
