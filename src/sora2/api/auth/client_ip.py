"""The caller's address: `X-Forwarded-For` is believed only when it comes from a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: list[Network] = [
            ipaddress.ip_network(item, strict=False) for item in trusted
        ]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        # Loopback is the web's proxy on this machine (DESIGN: both listen on 127.0.0.1).
        return ip.is_loopback or any(ip in network for network in self._trusted)

    def of(self, peer: str | None, forwarded_for: str | None) -> str:
        """Reads `X-Forwarded-For` backwards past trusted hops: the first other is the caller."""
        address = peer or "unknown"
        if not forwarded_for or not self._is_trusted(address):
            return address
        for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
            address = hop
            if not self._is_trusted(hop):
                break
        return address
