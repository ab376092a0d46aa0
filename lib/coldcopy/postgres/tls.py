"""TLS to PostgreSQL with libpq's meaning of every sslmode, for pg8000 and for the client programs.

libpq's rules (PostgreSQL 15, fe-secure-openssl.c and fe-connect.c), which both sides follow:

- ``disable`` never encrypts; ``allow`` tries without TLS, then with it if the server refuses;
  ``prefer`` tries with TLS, then without it if that fails; ``require`` and the verify modes only
  with TLS.
- A root certificate, when one is given, is checked in every mode that encrypts: ``require`` with
  a root certificate verifies the CA like ``verify-ca``.  ``verify-full`` also checks the host name
  against the certificate's names.  The verify modes without a root certificate are refused up front
  (``config``), and the system's CA store is never used (libpq before 16 does not use it).
- The client programs get the same root certificate through ``PGSSLROOTCERT`` (a value is written to
  a private temporary file), and without one a path that cannot exist, so that neither side picks up
  ``~/.postgresql/root.crt`` behind the settings' back.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from coldcopy.config import SSL_MODES_NEEDING_ROOT, SUPABASE_CA_HINT, RootCert
from coldcopy.errors import DatabaseError

#: PGSSLROOTCERT / PGSSLCERT when none is configured: below /dev/null, so it can never exist.
NO_FILE = "/dev/null/coldcopy-none"
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# OpenSSL's X509_V_ERR_* codes that ssl.SSLCertVerificationError carries
_NOT_YET_VALID, _EXPIRED = 9, 10
_NAME_MISMATCH = (62, 64)  # host name, IP address
_UNKNOWN_CA = (2, 18, 19, 20, 21)

Attempt = ssl.SSLContext | Literal[False]  # pg8000's ssl_context: False = without TLS


def ssl_context(mode: str, root: RootCert | None) -> ssl.SSLContext:
    """The context of an encrypted attempt in ``mode``: the CA checked when a root certificate is
    given (whatever the mode, as libpq does), the host name only in verify-full."""
    if mode in SSL_MODES_NEEDING_ROOT and root is None:
        raise ValueError(f"sslmode {mode} needs a root certificate")  # config refuses this up front
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # libpq's ssl_min_protocol_version
    if root is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=root.pem)
        ctx.check_hostname = mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def attempts(mode: str, root: RootCert | None) -> list[Attempt]:
    """The connection attempts libpq makes in ``mode``, in order (pg8000's ``ssl_context`` values)."""
    if mode == "disable":
        return [False]
    ctx = ssl_context(mode, root)
    if mode == "allow":
        return [False, ctx]
    if mode == "prefer":
        return [ctx, False]
    return [ctx]


def libpq_tls_env(mode: str, root: RootCert | None) -> dict[str, str]:
    """PGSSLMODE and PGSSLROOTCERT for a client program, meaning what :func:`attempts` means."""
    return {
        "PGSSLMODE": mode,
        "PGSSLROOTCERT": rootcert_file(root) if root else NO_FILE,
        "PGSSLCERT": NO_FILE,  # no client certificate: pg8000 sends none either
    }


_files: dict[str, str] = {}
_files_lock = threading.Lock()


def rootcert_file(root: RootCert) -> str:
    """A file holding ``root`` for libpq: its own file, or a private temporary one for a value
    (one per certificate and process, removed at exit)."""
    if root.path:
        return root.path
    with _files_lock:
        if root.pem not in _files:
            folder = tempfile.mkdtemp(prefix="coldcopy-tls-")  # mode 0700
            atexit.register(shutil.rmtree, folder, True)
            path = os.path.join(folder, "root.crt")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(root.pem)
            _files[root.pem] = path
        return _files[root.pem]


# -- saying what went wrong -----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCertificate:
    """What the server's certificate says, read without verifying it (for error messages only)."""

    names: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime


def peer_certificate(host: str, port: int, timeout: float = 10) -> PeerCertificate | None:
    """The certificate the server at ``host:port`` presents, or None when it cannot be read."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(_SSL_REQUEST)
            if sock.recv(1) != b"S":
                return None
            with ctx.wrap_socket(sock, server_hostname=_sni(host)) as tls:
                der = tls.getpeercert(binary_form=True)
        if not der:
            return None
        cert = x509.load_der_x509_certificate(der)
    except (OSError, ValueError):
        return None
    issuer = cert.issuer.rfc4514_string()
    return PeerCertificate(_names(cert), issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)


def _sni(host: str) -> str | None:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    return host


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        found = [*san.get_values_for_type(x509.DNSName)]
        found += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        if found:
            return tuple(found)
    return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def tls_error(
    exc: ssl.SSLError, host: str, port: int, mode: str, names: str, probe: bool = True
) -> DatabaseError:
    """A DatabaseError saying which check of the server's certificate failed and what to do.

    ``names`` is the settings' prefix (``DB_`` or ``VERIFY_DB_``); ``probe`` reads the certificate
    once more, unverified, to say what it carries.
    """
    where = f"{host}:{port}"
    code = exc.verify_code if isinstance(exc, ssl.SSLCertVerificationError) else None
    message = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else ""
    peer = peer_certificate(host, port) if probe and code is not None else None
    if code in _NAME_MISMATCH:
        carries = ", ".join(peer.names) if peer and peer.names else "other names"
        return DatabaseError(
            f"the server's certificate at {where} is not valid for {host!r}: it is issued for {carries} "
            f"({names}SSLMODE={mode} checks the host name)",
            f"set {names}HOST to a name the certificate carries (for Supabase, the host name shown in "
            f"the dashboard, never an IP address), or use {names}SSLMODE=verify-ca to check only the CA",
        )
    if code == _EXPIRED:
        when = f" on {peer.not_after:%Y-%m-%d %H:%M} UTC" if peer else ""
        return DatabaseError(
            f"the server's certificate at {where} expired{when}",
            "the server's certificate must be renewed by whoever runs the server; ColdCopy will not "
            "connect to it until then",
        )
    if code == _NOT_YET_VALID:
        when = f" before {peer.not_before:%Y-%m-%d %H:%M} UTC" if peer else " yet"
        return DatabaseError(
            f"the server's certificate at {where} is not valid{when}",
            "check this machine's clock, or wait until the certificate is valid",
        )
    if code in _UNKNOWN_CA:
        issuer = f" (it is issued by {peer.issuer})" if peer else ""
        return DatabaseError(
            f"the server's certificate at {where} is not signed by the CA in {names}SSLROOTCERT{issuer}",
            f"set {names}SSLROOTCERT to the CA certificate that signed the server's, as a file's path or "
            f"its PEM text ({SUPABASE_CA_HINT})",
        )
    if code is not None:
        return DatabaseError(
            f"the server's certificate at {where} failed verification: {message}",
            f"check {names}SSLROOTCERT and {names}SSLMODE",
        )
    return DatabaseError(
        f"the TLS handshake with {where} failed: {exc.reason or exc}",
        f"check {names}SSLMODE and that the server at {where} is a PostgreSQL server",
    )


def libpq_tls_hint(stderr: str, names: str = "DB_") -> str | None:
    """What to do about a client program's TLS failure, from libpq's own words (None: not one)."""
    if "does not match host name" in stderr:
        return (
            f"the server's certificate is issued for another host name (libpq names both above): set "
            f"{names}HOST to the certificate's, or use {names}SSLMODE=verify-ca to check only the CA"
        )
    if "certificate verify failed" in stderr:
        return (
            f"the server's certificate failed verification: check that {names}SSLROOTCERT is the CA that "
            f"signed it ({SUPABASE_CA_HINT}) and that the certificate has not expired"
        )
    if "server does not support SSL" in stderr:
        return f"the server does not accept TLS, which {names}SSLMODE requires"
    return None
