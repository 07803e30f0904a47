"""The hosted backend's client: the official `openai` client for OpenAI or Azure OpenAI, with its
credentials checked first (a blank or pasted key, a non-https endpoint: bad input, exit 2), and its
errors in words (`describe_error`, `retry_after`). No key is ever printed."""

from __future__ import annotations

import math
import os

from training.errors import EXIT_BAD_INPUT, EXIT_FAILED, TrainError
from training.experiment.config import ExperimentConfig

DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"


class HostedError(TrainError):
    """A failure to report to the user; `exit_code` 2 for bad input, 1 for the service's refusal."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def make_client(backend: str, cfg: ExperimentConfig | None = None, *, base_url: str | None = None,
                max_retries: int = 3, timeout: float = 120.0):
    """The official client. openai: OPENAI_API_KEY (and OPENAI_BASE_URL, as the client reads it).
    azure-openai: endpoint and API version from the experiment file or AZURE_OPENAI_ENDPOINT /
    OPENAI_API_VERSION; AZURE_OPENAI_API_KEY, else Entra ID (DefaultAzureCredential)."""
    import openai

    if backend == "openai":
        _check_key("OPENAI_API_KEY", required=True)
        return openai.OpenAI(base_url=base_url, max_retries=max_retries, timeout=timeout)
    settings = cfg.openai if cfg else None
    endpoint = (settings and settings.azure_endpoint) or os.environ.get("AZURE_OPENAI_ENDPOINT")
    if not endpoint:
        raise HostedError("azure-openai: set openai.azure_endpoint in the experiment file or "
                          "AZURE_OPENAI_ENDPOINT", EXIT_BAD_INPUT)
    from training.experiment.config import endpoint_problem

    if problem := endpoint_problem(endpoint):  # the file's was checked when it was read
        raise HostedError(f"AZURE_OPENAI_ENDPOINT: {problem}", EXIT_BAD_INPUT)
    version = ((settings and settings.api_version) or os.environ.get("OPENAI_API_VERSION")
               or DEFAULT_AZURE_API_VERSION)
    kwargs = dict(azure_endpoint=endpoint, api_version=version, max_retries=max_retries,
                  timeout=timeout)
    if _check_key("AZURE_OPENAI_API_KEY", required=False):
        return openai.AzureOpenAI(**kwargs)
    from azure.identity import DefaultAzureCredential, get_bearer_token_provider

    provider = get_bearer_token_provider(DefaultAzureCredential(),
                                         "https://cognitiveservices.azure.com/.default")
    return openai.AzureOpenAI(azure_ad_token_provider=provider, **kwargs)


def _check_key(variable: str, required: bool) -> bool:
    """Whether the key variable is set; one that is blank or holds whitespace (a pasted key, a file
    read with its newline) is bad input here, not a "Connection error." after three retries. The
    key itself is never printed."""
    key = os.environ.get(variable)
    if key is None or (key == "" and not required):
        if required:
            raise HostedError(f"{variable} is not set", EXIT_BAD_INPUT)
        return False
    if not key.strip():
        raise HostedError(f"{variable} is blank", EXIT_BAD_INPUT)
    if any(c.isspace() or not c.isprintable() for c in key):
        raise HostedError(f"{variable} holds whitespace or a control character (a newline from a "
                          "file or a paste?); set it to the key alone", EXIT_BAD_INPUT)
    return True


def describe_error(e) -> str:
    """An API error in one line: its HTTP status and the service's message, any key masked."""
    status = getattr(e, "status_code", None)
    body = getattr(e, "body", None)  # the service's error object, when it sent one
    message = (body.get("message") if isinstance(body, dict) else None) or str(e)
    for variable in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):  # a proxy may echo the key
        if len(key := os.environ.get(variable, "").strip()) >= 8:
            message = message.replace(key, f"<{variable}>")
    return f"HTTP {status}: {message}" if status else message


def retry_after(e, default: float, cap: float = 300.0) -> float:
    """The server's `retry-after` (seconds) on a 429, else the default; at most `cap` (a value
    of inf or a year is the server's mistake, not a plan)."""
    headers = getattr(getattr(e, "response", None), "headers", None) or {}
    for key, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            wait = float(headers[key]) / scale
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isnan(wait):
            return min(cap, max(0.0, wait))
    return min(cap, default)
