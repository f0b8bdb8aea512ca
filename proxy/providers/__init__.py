"""Upstream providers: the adapter each deployment's ``provider:`` names (see base.py)."""

from __future__ import annotations

from collections.abc import Callable

from . import anthropic, azure, gemini
from .aws_credentials import AwsCredentials, resolve
from .base import Adapter, StreamTranslator, Untranslatable

PROVIDERS = ("openai", "anthropic", "azure", "gemini", "bedrock")

__all__ = ["PROVIDERS", "Adapter", "StreamTranslator", "Untranslatable", "adapter_for",
           "auth_headers"]


def adapter_for(provider: str, model: str, api_version: str | None,
                region: str | None = None,
                aws_credentials: Callable[[], AwsCredentials] = resolve) -> Adapter | None:
    """The deployment's adapter; None for ``openai``, whose requests go as they are.
    ``bedrock`` resolves AWS credentials (``aws_credentials``, which a router calls once
    for all its deployments): built off the event loop, as routers are."""
    if provider == "anthropic":
        return anthropic.AnthropicAdapter(model)
    if provider == "azure":
        return azure.AzureAdapter(model, api_version)
    if provider == "gemini":
        return gemini.GeminiAdapter(model)
    if provider == "bedrock":
        from . import bedrock   # botocore is an optional extra: only when asked for
        return bedrock.BedrockAdapter(model, region, aws_credentials())
    return None


def auth_headers(provider: str, key: str | None, api_version: str | None) -> bytes:
    """The request header lines that carry the deployment's key (and API version)."""
    if provider == "anthropic":
        return anthropic.auth_headers(key, api_version)
    if provider == "azure":
        return azure.auth_headers(key)
    if provider == "gemini":
        return gemini.auth_headers(key)
    if provider == "bedrock":
        return b""   # each request is signed (BedrockAdapter.signed_headers)
    return b"authorization: Bearer %s\r\n" % key.encode("latin-1") if key else b""
