"""TLS shared by every transport: one way to build a verifying context, one way to explain a failure."""

from __future__ import annotations

import ssl

from deskmail.workers.transports.base import Outcome, TransportFailure


def context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """Verification against the system store or the configured CA, unless turned off; an unusable ca_file
    is a configuration failure."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransportFailure(Outcome.CONFIGURATION, f"the ca_file {ca_file!r} cannot be used: {exc}",
                               advice="set ca_file to a readable PEM file of CA certificates") from exc
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def problem(host: str, port: int, exc: BaseException) -> tuple[str, str]:
    """(what went wrong, what to change) for a failed TLS handshake with host:port."""
    text = str(exc)
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or text
    if "self-signed" in reason or "self signed" in reason:
        return (f"{host}:{port} presents a self-signed certificate ({reason})",
                "install a certificate from a trusted CA on the server, or set ca_file to the CA that signed it")
    if "unable to get local issuer" in reason or "unknown ca" in reason.lower():
        return (f"{host}:{port} presents a certificate from a CA this host does not trust ({reason})",
                "set ca_file to the CA certificate that signed the server's certificate")
    if "mismatch" in reason or "doesn't match" in reason:
        return (f"the certificate of {host}:{port} is not for {host} ({reason})",
                "use the host name the certificate names, or get a certificate for this name")
    if "expired" in reason:
        return f"the certificate of {host}:{port} has expired ({reason})", "renew the server's certificate"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return (f"{host}:{port} does not speak TLS at once ({reason})",
                f"port {port} expects STARTTLS or plain text: use security `starttls` (usually port 587), "
                "or security `tls` with the server's implicit-TLS port (usually 465)")
    if "UNSUPPORTED_PROTOCOL" in text or "PROTOCOL_VERSION" in text or "NO_PROTOCOLS" in text:
        return (f"{host}:{port} offers only TLS versions this host refuses ({reason})",
                "enable TLS 1.2 or newer on the server")
    return f"TLS with {host}:{port} failed: {reason}", "check the server's TLS set-up and certificate"
