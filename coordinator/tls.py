"""TLS for the coordinator's listeners, with a certificate the operator supplies (`hearth coordinator serve
--tls-cert FILE --tls-key FILE`): the HTTP API and website (uvicorn) and the embedded MQTT broker's listener
(amqtt). The embedded broker then also listens, in plain MQTT, on a random 127.0.0.1 port that only this
coordinator's own ingest client uses (traffic that never leaves the machine)."""

import ssl
from pathlib import Path
from typing import Optional


def check_pair(cert: Optional[Path], key: Optional[Path]) -> None:
    """Both or neither; each readable; the key matches the certificate. ValueError with a one-line reason."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together: give both files (PEM) or neither")
    if cert is None:
        return
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such file")
    try:
        server_context(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key} cannot be used: {e.strerror or e.reason or e} "
                         "(PEM certificate chain and its private key, unencrypted)") from None  # fmt: skip


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def broker_listeners(host: str, port: int, cert: Optional[Path], key: Optional[Path]) -> dict:
    """amqtt's `listeners`: plain MQTT on host:port, or MQTT over TLS there plus the plain loopback one."""
    if cert is None:
        return {"default": {"type": "tcp", "bind": f"{host}:{port}"}}
    return {  # amqtt copies "default"'s settings into every other listener's unset (default-valued) ones
        "default": {"type": "tcp", "bind": "127.0.0.1:0"},
        "tls": {"type": "tcp", "bind": f"{host}:{port}", "ssl": True, "certfile": str(cert), "keyfile": str(key)},
    }
