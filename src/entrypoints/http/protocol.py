"""Sanic's HTTP protocol, plus three guards:
- A TLS handshake sent to this plain-HTTP port is refused at once. Clients given `--tls-verify=false`
  (skopeo, podman, buildah) try HTTPS first; Sanic would wait for the end of headers that never come,
  and the client falls back to HTTP only after its 10 s TLS timeout.
- A request's line and headers must be complete within `header_timeout` seconds of its first byte.
  Sanic's own timeouts measure silence, so a slowloris client trickling one header byte at a time
  would hold its connection open for ever.
- A connection that timed out is closed, even when its client is stuck in the middle of a body."""

from __future__ import annotations

import logging

from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

log = logging.getLogger("myregistry")


class RegistryHttpProtocol(HttpProtocol):
    __slots__ = ("_seen_first_bytes", "_header_timer")
    header_timeout: float = 20.0  # set from the settings at start

    def data_received(self, data: bytes) -> None:
        if not getattr(self, "_seen_first_bytes", False):
            self._seen_first_bytes = True
            self._header_timer = None
            # A TLS record: content type 22 (handshake), version 3.x.
            if len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03:
                if self.transport is not None:
                    self.transport.abort()
                return
        super().data_received(data)
        http = getattr(self, "_http", None)
        if self._header_timer is None and http is not None and http.stage in (Stage.IDLE, Stage.REQUEST):
            self._header_timer = self.loop.call_later(
                self.header_timeout, self._headers_due, self.state["requests_count"])

    def _headers_due(self, requests_before: int) -> None:
        self._header_timer = None
        http = getattr(self, "_http", None)
        if http is None or self.transport is None or self.transport.is_closing():
            return
        if self.state["requests_count"] == requests_before and http.stage in (Stage.IDLE, Stage.REQUEST):
            peer = self.transport.get_extra_info("peername")
            log.warning("closing a connection from %s: its request headers took over %s s "
                        "(REGISTRY_HEADER_TIMEOUT)", peer[0] if peer else "?", self.header_timeout)
            self.transport.abort()

    def check_timeouts(self) -> None:
        """Sanic's check, which on a timeout cancels the request and answers 503, then stops checking.
        If the client then goes silent in the middle of its body, Sanic waits for the rest of that body
        for ever; so a connection that timed out is closed for good a second later."""
        before = getattr(self, "_callback_check_timeouts", None)
        super().check_timeouts()
        if getattr(self, "_callback_check_timeouts", None) is before and self.transport is not None:
            self.loop.call_later(1.0, self._close_for_good)

    def _close_for_good(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)
