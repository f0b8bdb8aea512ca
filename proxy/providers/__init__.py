"""Upstream providers: the adapter each deployment's ``provider:`` names (see base.py)."""

from __future__ import annotations

from . import anthropic, azure, gemini
from .base import Adapter, StreamTranslator, Untranslatable

PROVIDERS = ("openai", "anthropic", "azure", "gemini")

__all__ = ["PROVIDERS", "Adapter", "StreamTranslator", "Untranslatable", "adapter_for",
           "auth_headers"]


def adapter_for(provider: str, model: str, api_version: str | None) -> Adapter | None:
    """The deployment's adapter; None for ``openai``, whose requests go as they are."""
    if provider == "anthropic":
        return anthropic.AnthropicAdapter(model)
    if provider == "azure":
        return azure.AzureAdapter(model, api_version)
    if provider == "gemini":
        return gemini.GeminiAdapter(model)
    return None


def auth_headers(provider: str, key: str | None, api_version: str | None) -> bytes:
    """The request header lines that carry the deployment's key (and API version)."""
    if provider == "anthropic":
        return anthropic.auth_headers(key, api_version)
    if provider == "azure":
        return azure.auth_headers(key)
    if provider == "gemini":
        return gemini.auth_headers(key)
    return b"authorization: Bearer %s\r\n" % key.encode("latin-1") if key else b""
