"""CurveZMQ key files for the remote gateway, and who may do what with them.

Key files are the ones pyzmq's :mod:`zmq.auth` writes and reads (``NAME.key`` holds
the public key, ``NAME.key_secret`` both). A board's keys directory::

    keys_dir/
      server.key, server.key_secret   the gateway's own pair (give server.key to operators)
      readers/NAME.key                clients allowed to read bus traffic
      writers/NAME.key                clients allowed to send commands

:class:`KeyRing` is the credentials provider the ZAP authenticator asks about each
connecting client: it (re)reads its directory when the directory changed, answers by
public key, and counts refusals, logging the first one of each key and then one summary
per minute, so a client that keeps reconnecting with a wrong key cannot flood the log.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.auth

from agent.errors import ConfigError

__all__ = [
    "SERVER_KEY",
    "ClientKeys",
    "KeyRing",
    "generate",
    "key_dir",
    "list_keys",
    "load_client_keys",
    "load_server_secret",
]

log = logging.getLogger(__name__)

SERVER_KEY = "server"
READERS = "readers"
WRITERS = "writers"
SUMMARY_EVERY_S = 60.0
MAX_TRACKED_KEYS = 1024  # distinct refused keys remembered (a key flood is still one counter)


def key_dir(path: str) -> Path:
    return Path(os.path.expanduser(path))


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret in ``directory``; refuse to overwrite a pair."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: use a plain name like 'alice' or 'server'")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise ConfigError(f"{public} already exists: remove it first to make a new pair")
    made_public, made_secret = zmq.auth.create_certificates(directory, name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


@dataclass(frozen=True)
class KeyEntry:
    role: str  # "own" (a pair in keys_dir), "reader", "writer"
    name: str
    public_z85: str
    path: Path
    has_secret: bool


def list_keys(directory: Path) -> list[KeyEntry]:
    """Every key in ``directory`` (own pairs) and its readers/ and writers/ subdirectories."""
    out: list[KeyEntry] = []
    for role, sub in (("own", directory), ("reader", directory / READERS)):
        out += _entries(role, sub)
    out += _entries("writer", directory / WRITERS)
    return out


def _entries(role: str, directory: Path) -> list[KeyEntry]:
    if not directory.is_dir():
        return []
    entries = []
    for path in sorted(directory.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            log.warning("%s: not a key file: %s", path, exc)
            continue
        secret = path.with_suffix(".key_secret").exists()
        entries.append(KeyEntry(role, path.stem, public.decode(), path, secret))
    return entries


def load_server_secret(directory: Path) -> tuple[bytes, bytes]:
    """The gateway's own (public, secret) pair, or a ConfigError saying how to make one."""
    path = directory / f"{SERVER_KEY}.key_secret"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"remote gateway: no server key at {path} ({exc}); run "
            f"`navtalk-agent keys generate {SERVER_KEY} --dir {directory}`"
        ) from exc
    if not secret:
        raise ConfigError(f"remote gateway: {path} holds no secret key")
    return public, secret


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a gateway: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


def load_client_keys(secret_file: str, server_key_file: str) -> ClientKeys:
    try:
        public, secret = zmq.auth.load_certificate(os.path.expanduser(secret_file))
        server_public, _ = zmq.auth.load_certificate(os.path.expanduser(server_key_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load CURVE keys: {exc}") from exc
    if not secret:
        raise ConfigError(f"{secret_file} holds no secret key (give NAME.key_secret)")
    return ClientKeys(public, secret, server_public)


@dataclass
class KeyRing:
    """The public keys allowed in one role (a directory of ``*.key``), for ZAP.

    ``callback`` is what pyzmq's authenticator calls (``configure_curve_callback``).
    """

    role: str
    directory: Path
    _keys: dict[bytes, str] = field(default_factory=dict)  # z85 public key -> name
    _mtime_ns: int = -1
    refused: int = 0  # handshakes refused in this role
    _refused_by_key: dict[bytes, int] = field(default_factory=dict)
    _unreported: int = 0
    _last_summary: float = 0.0

    def reload(self) -> None:
        try:
            mtime = self.directory.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime == self._mtime_ns:
            return
        self._mtime_ns = mtime
        keys: dict[bytes, str] = {}
        for entry in _entries(self.role, self.directory):
            keys[entry.public_z85.encode()] = entry.name
        self._keys = keys
        log.info("= %s keys: %d allowed (%s)", self.role, len(keys), self.directory)

    def name_of(self, public_z85: bytes) -> str | None:
        return self._keys.get(public_z85)

    def check(self, public_z85: bytes, now: float) -> bool:
        """Allowed? Refusals are counted; logged once per key, then as a summary."""
        self.reload()
        name = self._keys.get(public_z85)
        if name is not None:
            log.debug("< %s %s: allowed", self.role, name)
            return True
        self.refused += 1
        seen = self._refused_by_key.get(public_z85)
        if seen is None and len(self._refused_by_key) < MAX_TRACKED_KEYS:
            self._refused_by_key[public_z85] = 1
            log.warning(
                "remote %s access refused: unknown CURVE key %s (add its .key to %s to allow)",
                self.role, public_z85.decode("ascii", "replace"), self.directory,
            )  # fmt: skip
            self._last_summary = self._last_summary or now
            return False
        if seen is not None:
            self._refused_by_key[public_z85] = seen + 1
        self._unreported += 1
        if now - self._last_summary >= SUMMARY_EVERY_S:
            log.warning(
                "remote %s access: %d more refused handshake(s) from %d unknown key(s)",
                self.role, self._unreported, len(self._refused_by_key),
            )  # fmt: skip
            self._unreported = 0
            self._last_summary = now
        return False

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook (``key`` is the z85 public key)."""
        return self.check(key, time.monotonic())
