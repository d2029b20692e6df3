"""How the node trusts a coordinator's TLS certificate (https:// coordinator, mqtts:// broker): the system's trust
store and Mozilla's (certifi), plus a private CA the volunteer names with `--ca-cert FILE` or HEARTH_CA_CERT.
A certificate that does not verify is refused with one sentence saying what to do, never retried."""

import os
import ssl
from pathlib import Path
from typing import Optional

CA_ENV = "HEARTH_CA_CERT"


def ca_cert_from_env() -> Optional[str]:
    return os.environ.get(CA_ENV, "").strip() or None


def client_context(ca_cert: Optional[str | Path] = None) -> ssl.SSLContext:
    """A verifying client context (hostname checked); ValueError if `ca_cert` cannot be read as PEM."""
    import certifi

    context = ssl.create_default_context()  # the system's trust store
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=certifi.where())
    ca_cert = ca_cert or ca_cert_from_env()
    if ca_cert:
        try:
            context.load_verify_locations(cafile=str(Path(ca_cert).expanduser()))
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"--ca-cert {ca_cert} cannot be used: {getattr(e, 'strerror', None) or e} "
                             "(a PEM file with the CA certificate)") from None  # fmt: skip
    return context


def untrusted(error: BaseException) -> Optional[ssl.SSLCertVerificationError]:
    """The certificate verification failure behind `error` (its cause chain), if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ssl.SSLCertVerificationError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__ or (error.args[0] if error.args and isinstance(error.args[0], BaseException) else None)
    return None


def untrusted_message(what: str, where: str, error: ssl.SSLCertVerificationError) -> str:
    reason = error.verify_message or error.reason or str(error)
    return (f"the {what} at {where} presented a TLS certificate this PC does not trust ({reason}); if it uses a "
            f"private CA, give that CA's certificate with --ca-cert FILE or {CA_ENV}")  # fmt: skip


def trust_process_wide(ca_cert: str | Path, directory: Path) -> Path:
    """Make every HTTPS client of this process and its children trust `ca_cert` besides Mozilla's CAs: httpx reads
    SSL_CERT_FILE, so it names a bundle (certifi's + the CA) written to `directory`. The bundle's path."""
    import certifi

    client_context(ca_cert)  # a clear error for an unusable file, before anything relies on it
    bundle = Path(directory) / "ca-bundle.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    text = Path(certifi.where()).read_text() + "\n" + Path(ca_cert).expanduser().read_text()
    tmp = bundle.with_name(f".{bundle.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, bundle)
    os.environ[CA_ENV] = str(ca_cert)
    os.environ["SSL_CERT_FILE"] = str(bundle)
    return bundle
