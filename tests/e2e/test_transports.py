"""The other listeners: a unix socket, and TCP with TLS."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import warnings
from pathlib import Path

import pytest
import websockets.sync.client
from websockets.exceptions import InvalidMessage

from ._client import connect, echo, ready
from .conftest import Daemon, DaemonFactory

# --- unix socket ---------------------------------------------------------------


def _stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a crashed daemon would."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def _stale_file(path: Path) -> None:
    path.write_text("not a socket")


@pytest.mark.parametrize("leave_stale", [None, _stale_socket, _stale_file])
def test_unix_socket(spawn_daemon: DaemonFactory, tmp_path: Path, leave_stale):
    path = tmp_path / "sock" / "channel.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are short"
    if leave_stale is not None:
        path.parent.mkdir()
        leave_stale(path)
    daemon = spawn_daemon("--no-require-token", "--unix-socket", str(path))
    assert daemon.url == f"unix://{path}/"
    assert daemon.port is None
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    with websockets.sync.client.unix_connect(
        str(path),
        uri="ws://localhost/?client_id=local",
        open_timeout=5,
        close_timeout=2,
    ) as ws:
        first = ready(ws)
        assert first["client_id"] == "local"
        echo(ws, first["chat_id"], "over a unix socket")
    assert daemon.stop() == 0
    assert not os.path.lexists(path)


# --- TLS ------------------------------------------------------------------------


def _self_signed_with_cryptography(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _self_signed_with_openssl(cert: Path, key: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "TLS tests need a certificate: add 'cryptography' to the test "
            "extras (or install the openssl binary)"
        )
    subprocess.run(
        [
            openssl,
            *("req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (PEM)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _self_signed_with_openssl(cert, key)
    else:
        _self_signed_with_cryptography(cert, key)
    return cert, key


@pytest.fixture(scope="module")
def tls(
    spawn_module_daemon: DaemonFactory, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Daemon, Path]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    daemon = spawn_module_daemon(
        "--no-require-token", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    )
    return daemon, cert


def _client_context(
    cert: Path, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    if version is not None:
        # Let the client really offer old versions, so it is the server that
        # refuses them (not our own OpenSSL's security level).
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1
            ctx.minimum_version = version
            ctx.maximum_version = version
    return ctx


def test_tls_serves_websockets_and_http(tls):
    daemon, cert = tls
    assert daemon.url == f"wss://127.0.0.1:{daemon.port}/"
    with connect(daemon.ws_url("client_id=secure"), ssl=_client_context(cert)) as ws:
        first = ready(ws)
        assert first["client_id"] == "secure"
        echo(ws, first["chat_id"], "over TLS")
    conn = http.client.HTTPSConnection(
        daemon.host, daemon.port, timeout=5, context=_client_context(cert)
    )
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b'{"status":"ok"}')
    finally:
        conn.close()


def test_tls_1_2_is_the_minimum(tls):
    daemon, cert = tls
    url = daemon.ws_url("client_id=v")
    with connect(url, ssl=_client_context(cert, ssl.TLSVersion.TLSv1_2)) as ws:
        ready(ws)
    old = _client_context(cert, ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError) as refused, connect(url, ssl=old):
        pass
    # The server refused (an alert, or it hung up), not our own client: this
    # context can offer TLS 1.1, and a local failure would be
    # NO_PROTOCOLS_AVAILABLE or NO_CIPHERS_AVAILABLE.
    error = refused.value
    assert isinstance(error, ssl.SSLEOFError) or "ALERT_PROTOCOL_VERSION" in str(
        error
    ), error


def test_plain_websocket_on_the_tls_port_is_refused(tls):
    daemon, _ = tls
    plain = f"ws://{daemon.host}:{daemon.port}/?client_id=plain"
    with pytest.raises((InvalidMessage, ConnectionError, EOFError)), connect(plain):
        pass
