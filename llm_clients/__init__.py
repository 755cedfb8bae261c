"""Build one client per configured backend. Adding a provider is a module plus one branch
in `build_client`."""

from __future__ import annotations

from .base import Completion, GenerationKwargs, LLMClient, LLMError, Message, Usage
from .limits import CallPolicy, TransientError

__all__ = [
    "CallPolicy", "Completion", "GenerationKwargs", "LLMClient", "LLMError", "Message",
    "TransientError", "Usage", "build_client",
]


def build_client(name: str, config) -> LLMClient:
    policy = CallPolicy(config.max_concurrency, max_retries=config.max_retries, timeout_s=config.timeout_s,
                        adaptive=config.adaptive)
    if config.provider == "openai":
        from .openai import OpenAIClient
        return OpenAIClient(name, config, policy)
    if config.provider == "mistral":
        from .mistral import MistralClient
        return MistralClient(name, config, policy)
    if config.provider == "tgi":
        from .tgi import TGIClient
        return TGIClient(name, config, policy)
    if config.provider == "local":
        from .local import LocalClient
        return LocalClient(name, config, policy)
    raise ValueError(f"unknown provider {config.provider!r}")
