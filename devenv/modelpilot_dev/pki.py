"""Certificates and keys for the local control plane.

Part of the local environment. One self-signed CA signs the apiserver's serving
certificate and every client certificate (admin, controller-manager, scheduler);
a separate RSA key pair signs service-account tokens. Everything is written
once into the environment's state directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The apiserver's ClusterIP inside the service range the environment uses.
KUBERNETES_SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class Pki:
    """Paths of every file the control plane and its clients need."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def apiserver_crt(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


#: client identity name -> (common name, organisation)
CLIENTS = {
    "admin": ("admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
}


def _key() -> ec.EllipticCurvePrivateKey:
    # EC keys generate in microseconds; RSA would cost seconds on every fresh start.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    *,
    ca: bool = False,
    server_sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server_sans:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(x509.SubjectAlternativeName(server_sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    return builder.sign(ca_key, hashes.SHA256())


def ensure(directory: Path, extra_ips: tuple[str, ...] = (),
           extra_clients: dict[str, tuple[str, str | None]] | None = None) -> Pki:
    """Create the CA, serving, client and service-account material if it is not there yet.

    ``extra_ips`` are further apiserver addresses (the real node's host-side veth address);
    ``extra_clients`` further client identities (the real node's kubelet and kube-proxy).
    """
    pki = Pki(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clients = {**CLIENTS, **(extra_clients or {})}
    if pki.sa_pub.exists() and all(pki.client_crt(n).exists() for n in clients):
        return pki
    ca_key = _key()
    ca_name = _name("modelpilot-dev-ca")
    ca_cert = _sign(ca_name, ca_key.public_key(), ca_key, ca_name, ca=True)
    _write_key(pki.ca_key, ca_key)
    pki.ca_crt.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local")
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", KUBERNETES_SERVICE_IP, *extra_ips)]
    server_key = _key()
    server_cert = _sign(_name("kube-apiserver"), server_key.public_key(), ca_key, ca_name, server_sans=sans)
    _write_key(pki.apiserver_key, server_key)
    pki.apiserver_crt.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))

    for name, (cn, org) in clients.items():
        key = _key()
        cert = _sign(_name(cn, org), key.public_key(), ca_key, ca_name)
        _write_key(pki.client_key(name), key)
        pki.client_crt(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    # Service-account tokens: RS256 is what every Kubernetes client expects.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki
