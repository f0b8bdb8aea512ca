"""The error tree and the only mapping from errors to HTTP status codes."""

from __future__ import annotations


class ProxyError(Exception):
    """Base of every error llmedge answers a client with."""

    status = 500
    type = "server_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if param is not None:
            self.param = param
        self.retry_after = retry_after


class ClientError(ProxyError):
    status = 400
    type = "invalid_request_error"


class BadRequest(ClientError):
    pass


class NotFound(ClientError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405


class UpstreamError(ProxyError):
    """An attempt at one upstream failed; the dispatcher may try another."""

    status = 502
    type = "upstream_error"
    kind = "error"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "timeout"


class FirstTokenTimeout(UpstreamTimeout):
    """A stream sent no content token within its deployment's first_token_s."""

    kind = "first_token"


class DeadlineExceeded(UpstreamError):
    """The request's overall deadline passed before an upstream answered: not a fault of
    the endpoint that was being tried, so it does not count against it."""

    status = 504
    kind = "deadline"


class UpstreamReset(UpstreamError):
    kind = "reset"


class UpstreamBadResponse(UpstreamError):
    """The upstream said it succeeded but sent something else than was asked for: a body
    that is not a JSON object, or a whole answer to a request for a stream."""

    kind = "bad_response"


class UpstreamStreamError(UpstreamError):
    """A stream that opened with an error event instead of content."""

    kind = "stream_error"


class UpstreamUnavailable(UpstreamError):
    """Every endpoint of a deployment is ejected or has its circuit open."""

    status = 503
    kind = "unavailable"


class UpstreamSaturated(UpstreamError):
    """A deployment is at its max_inflight: skipped, like an open circuit."""

    status = 429
    kind = "saturated"


class Overloaded(ProxyError):
    """The whole server is at its max_inflight."""

    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamStatus(UpstreamError):
    """The upstream answered with a retryable status (429 or 5xx)."""

    kind = "status"

    def __init__(self, message: str, *, upstream_status: int, body: bytes,
                 content_type: bytes | None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.upstream_status = upstream_status
        self.body = body
        self.content_type = content_type


class ContextWindowExceeded(UpstreamStatus):
    """The upstream refused the prompt as too long for its context window: the request's
    trouble, not the endpoint's, and a deployment with a larger window may take it."""

    kind = "context_length"


class NoHealthyUpstream(ProxyError):
    status = 503
    type = "upstream_error"
    code = "no_healthy_upstream"


class ConfigError(Exception):
    """A configuration that cannot be served; ``problems`` lists every reason with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ReloadRejected(Exception):
    """A reload did not happen; the configuration in use keeps serving."""

    def __init__(self, reason: str, problems: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problems = problems or [reason]
