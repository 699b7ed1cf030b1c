"""Sanic's HTTP protocol, plus one courtesy: a TLS handshake sent to this plain-HTTP port is refused at
once. Clients given `--tls-verify=false` (skopeo, podman, buildah) try HTTPS first; Sanic would wait for
the end of headers that never come, and the client falls back to HTTP only after its 10 s TLS timeout."""

from __future__ import annotations

from sanic.server.protocols.http_protocol import HttpProtocol


class RegistryHttpProtocol(HttpProtocol):
    __slots__ = ("_seen_first_bytes",)

    def data_received(self, data: bytes) -> None:
        if not getattr(self, "_seen_first_bytes", False):
            self._seen_first_bytes = True
            # A TLS record: content type 22 (handshake), version 3.x.
            if len(data) >= 2 and data[0] == 0x16 and data[1] == 0x03:
                if self.transport is not None:
                    self.transport.abort()
                return
        super().data_received(data)
