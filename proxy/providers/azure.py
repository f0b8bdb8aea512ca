"""``provider: azure``: Azure OpenAI. The wire is OpenAI's; what differs is the address —
``{base_url}/openai/deployments/{model}/chat/completions?api-version=...``, where the
deployment's ``model`` names the Azure deployment — and the key, sent as ``api-key``."""

from __future__ import annotations

from urllib.parse import quote

from .base import Adapter

DEFAULT_VERSION = "2024-10-21"


class AzureAdapter(Adapter):
    name = "azure"

    def __init__(self, model: str, version: str | None) -> None:
        self.prefix = b"/openai/deployments/%s" % quote(model, safe="").encode("ascii")
        self.query = b"?api-version=%s" % quote(version or DEFAULT_VERSION,
                                                 safe="").encode("ascii")

    def serves(self, path: bytes) -> bool:
        return path in (b"/chat/completions", b"/embeddings")

    def request_path(self, path: bytes, stream: bool) -> bytes:
        return self.prefix + path + self.query


def auth_headers(key: str | None) -> bytes:
    return b"api-key: %s\r\n" % key.encode("latin-1") if key else b""
