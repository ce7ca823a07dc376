"""mTLS certificates taken up again when their files change, without a restart.

cert-manager renews a service's certificate into its Secret, and Kubernetes updates the mounted files in
place (a directory mount, never ``subPath``). Both ends take the new files up:

- a server's credentials are dynamic: each new connection's handshake asks ``ServerCertificates`` for
  the current files, which it reads again when one of them changed;
- a client's ``ReloadingChannel`` looks at its files at most every ``check_every_s`` and, when one
  changed, makes a new channel with them for the next calls; calls under way finish on the old one,
  which is closed a grace period later.

A file caught half-written (the pair does not load) keeps the previous credentials until the next look.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

_OLD_CHANNEL_GRACE_S = 120.0


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    """What tells a file changed: its modification time and size (a Secret update swaps a symlink,
    which changes both for the path we read)."""
    stats = [path.stat() for path in paths]
    return tuple((s.st_mtime_ns, s.st_size) for s in stats)


class ServerCertificates:
    """The current server certificate configuration, read again when the files change."""

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self._paths = (ca, cert, key)
        self._stamp = _stamp(self._paths)
        self.initial = self._configuration()

    def _configuration(self) -> Any:
        ca, cert, key = (path.read_bytes() for path in self._paths)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> Any:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep the current)."""
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except Exception:  # noqa: BLE001 - mid-update or unreadable: keep serving with the current one
            log.warning("tls certificate files unreadable, keeping the current ones")
            return None
        self._stamp = stamp
        log.info("tls certificates reloaded", extra={"side": "server"})
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self.initial, self.fetch, require_client_authentication=True)


class ReloadingChannel(grpc.Channel):
    """A channel whose calls go through a channel made with the current certificate files."""

    def __init__(self, make: Callable[[], grpc.Channel], paths: tuple[Path, ...], check_every_s: float = 30.0) -> None:
        self._make, self._paths, self._every = make, paths, check_every_s
        self._lock = threading.Lock()
        self._stamp = _stamp(paths)
        self._channel = make()
        self._next_check = time.monotonic() + check_every_s

    def current(self) -> grpc.Channel:
        if time.monotonic() >= self._next_check:
            self._maybe_reload()
        return self._channel

    def _maybe_reload(self) -> None:
        with self._lock:
            if time.monotonic() < self._next_check:
                return
            self._next_check = time.monotonic() + self._every
            try:
                stamp = _stamp(self._paths)
                if stamp == self._stamp:
                    return
                fresh = self._make()
            except Exception:  # noqa: BLE001 - mid-update: keep the current channel, look again later
                log.warning("tls certificate files unreadable, keeping the current ones")
                return
            old, self._channel, self._stamp = self._channel, fresh, stamp
        log.info("tls certificates reloaded", extra={"side": "client"})
        closer = threading.Timer(_OLD_CHANNEL_GRACE_S, old.close)
        closer.daemon = True
        closer.start()

    # -- grpc.Channel: each multicallable resolves the current channel at every call --------------------
    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Call(self, lambda channel: channel.unary_unary(method, *args, **kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Call(self, lambda channel: channel.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Call(self, lambda channel: channel.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Call(self, lambda channel: channel.stream_stream(method, *args, **kwargs))

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class _Call:
    """A multicallable bound to a ``ReloadingChannel``: made again on a channel's first use after a reload."""

    def __init__(self, owner: ReloadingChannel, bind: Callable[[grpc.Channel], Any]) -> None:
        self._owner, self._bind = owner, bind
        self._for: grpc.Channel | None = None
        self._callable: Any = None

    def _target(self) -> Any:
        channel = self._owner.current()
        if channel is not self._for:
            self._callable, self._for = self._bind(channel), channel
        return self._callable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().with_call(*args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._target().future(*args, **kwargs)
