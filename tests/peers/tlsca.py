"""A throwaway certificate authority for tests: server certificates for TLS peers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
_VALIDITY = dt.timedelta(days=2)
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate file and its unencrypted PEM private key file."""

    cert_path: Path
    key_path: Path


def server_context(pair: CertPair) -> ssl.SSLContext:
    """Return a server-side TLS context that presents `pair`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert_path, pair.key_path)
    return ctx


def _new_key() -> ec.EllipticCurvePrivateKey:
    """Return a fresh EC P-256 key (fast to generate)."""
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """Return a subject/issuer name holding only a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    """Return a subjectAltName with IP entries for addresses and DNS entries otherwise."""
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    """Return a certificate builder with serial, validity and key identifiers set."""
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_extensions(builder: x509.CertificateBuilder, hosts: Iterable[str]) -> x509.CertificateBuilder:
    """Add the extensions a TLS server certificate needs."""
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
    )


def _write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    """Write a certificate (and optionally a key next to it) as PEM."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.with_suffix(".key").write_bytes(key_bytes)


class TestCA:
    """A CA living in one directory that issues server certificates for local peers."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "deskmail test CA") -> None:
        """Create the CA key and self-signed CA certificate in `directory`."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._serial = itertools.count(1)
        self._key = _new_key()
        self._name = _name(name)
        builder = _builder(self._name, self._name, self._key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(_CA_KEY_USAGE, critical=True)
        self._cert = builder.sign(self._key, hashes.SHA256())
        _write_pem(self.ca_path, self._cert, self._key)

    @property
    def ca_path(self) -> Path:
        """Path of the CA certificate (PEM), to configure as the trusted CA file."""
        return self.directory / "ca.pem"

    def issue(self, hosts: Iterable[str] = DEFAULT_HOSTS) -> CertPair:
        """Issue a server certificate for `hosts` signed by this CA."""
        key = _new_key()
        hosts = tuple(hosts)
        builder = _builder(_name(hosts[0]), self._name, key.public_key())
        builder = _leaf_extensions(builder, hosts).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
        )
        return self._store(builder.sign(self._key, hashes.SHA256()), key, "server")

    def self_signed(self, hosts: Iterable[str] = DEFAULT_HOSTS) -> CertPair:
        """Return a certificate for `hosts` that signs itself and is unknown to this CA."""
        key = _new_key()
        hosts = tuple(hosts)
        builder = _leaf_extensions(_builder(_name(hosts[0]), _name(hosts[0]), key.public_key()), hosts)
        return self._store(builder.sign(key, hashes.SHA256()), key, "selfsigned")

    def wrong_host(self) -> CertPair:
        """Issue a certificate from this CA that names only `other.invalid`."""
        return self.issue(hosts=("other.invalid",))

    def client_context(self) -> ssl.SSLContext:
        """Return a verifying client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    server_context = staticmethod(server_context)

    def _store(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, kind: str) -> CertPair:
        """Write a leaf certificate and key under a fresh name and return their paths."""
        path = self.directory / f"{kind}-{next(self._serial)}.pem"
        _write_pem(path, cert, key)
        return CertPair(cert_path=path, key_path=path.with_suffix(".key"))


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
