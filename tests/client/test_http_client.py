"""The CLI's HTTP client settings (app.client.http): TLS verified with the CA bundle wherever
TLS may be spoken; for a plain http:// server without a proxy, a context that holds no CA
(it would refuse any TLS peer) instead of loading the bundle."""

from __future__ import annotations

import os
import ssl

from app.client.http import _tls_context


def test_plain_http_without_a_proxy_gets_a_context_that_trusts_nothing(monkeypatch):
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    context = _tls_context("http://127.0.0.1:8000")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0


def test_https_or_a_proxy_keep_the_default_verification(monkeypatch):
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    assert _tls_context("https://example.org") is True
    assert _tls_context("HTTPS://example.org") is True
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert _tls_context("http://127.0.0.1:8000") is True
