"""Throwaway TLS material for the secured test broker and registry: a private CA, a server
certificate for loopback, a client certificate (mTLS) and a second CA that signed nothing here
(what a consumer trusting the wrong CA sees). Made per run in milliseconds with trustme; never
committed, never reused outside the run that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

LOOPBACK = ("127.0.0.1", "localhost")
CLIENT_IDENTITY = "order-consumer.test"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files; keys are unencrypted PKCS#8 (the form Kafka's PEM key store reads)."""

    ca: Path
    server_cert: Path  # leaf then chain, valid for 127.0.0.1 and localhost
    server_key: Path
    client_cert: Path  # CN=order-consumer, for mutual TLS
    client_key: Path
    untrusted_ca: Path  # a CA nobody here was signed by

    def read(self, name: str) -> str:
        path: Path = getattr(self, name)
        return path.read_text(encoding="ascii")


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="order-consumer test CA")
    server = ca.issue_cert(*LOOPBACK, common_name="localhost")
    client = ca.issue_cert(CLIENT_IDENTITY, common_name="order-consumer")
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        untrusted_ca=directory / "untrusted-ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    trustme.CA(organization_name="someone else's CA").cert_pem.write_to_path(
        str(files.untrusted_ca)
    )
    for leaf, cert_path, key_path in (
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
    ):
        cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key_path.write_bytes(_pkcs8(leaf.private_key_pem.bytes()))
        key_path.chmod(0o600)
    return files


def _pkcs8(pem: bytes) -> bytes:
    """trustme writes traditional OpenSSL keys; Kafka's PEM support reads PKCS#8 only."""
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
