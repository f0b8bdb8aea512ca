"""The error tree, and the one place that says what an error is in each client protocol:
its HTTP status and OpenAI error body, its gRPC status code and details."""

from __future__ import annotations

import orjson


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


class InternalError(ProxyError):
    """Something in llmedge itself went wrong; the details are in the log, not the answer."""

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


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


class UpstreamAnswer(ProxyError):
    """An upstream's own error answer, passed on: its status, and its body when that is
    already an OpenAI-shaped error (it says best what went wrong)."""

    type = "upstream_error"

    def __init__(self, status: int, message: str, type_: str, *, code: str | None = None,
                 param: str | None = None, body: bytes | None = None,
                 content_type: bytes | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code=code, param=param, retry_after=retry_after)
        self.status = status
        self.type = type_
        self.body = body
        self.content_type = content_type


class NoHealthyUpstream(ProxyError):
    status = 503
    type = "upstream_error"
    code = "no_healthy_upstream"


def refusal(status: int, type_: str, message: str, code: str | None = None,
            retry_after: float | None = None) -> ProxyError:
    """An error whose status and type are only known when it happens (which of several
    ways every candidate failed)."""
    exc = ProxyError(message, code=code, retry_after=retry_after)
    exc.status = status
    exc.type = type_
    return exc


# === what an error is on each protocol ===

def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> bytes:
    """An OpenAI-shaped error object."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def http_body(exc: ProxyError) -> tuple[bytes, bytes | None]:
    """(body, content type) of an error on HTTP: the upstream's own error body when it is
    passed on (None: JSON), else the OpenAI error object."""
    if isinstance(exc, UpstreamAnswer) and exc.body is not None:
        return exc.body, exc.content_type
    return error_body(exc.message, exc.type, exc.code, exc.param), None


def retry_after_header(seconds: float) -> bytes:
    """Retry-After in whole seconds, rounded up, never 0 (a client would retry at once)."""
    return b"%d" % max(1, int(seconds + 0.999))


_GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    # A prompt too large for the upstream will not fit on a retry either.
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def grpc_code_name(exc: ProxyError) -> str:
    """The name of the ``grpc.StatusCode`` an error is answered with (a name, so that this
    module needs no grpc)."""
    status = exc.status
    name = _GRPC_CODES.get(status)
    if name is None:
        if 400 <= status < 500:
            name = "FAILED_PRECONDITION"
        else:
            name = "INTERNAL" if status >= 500 else "UNKNOWN"
    if name == "INTERNAL" and isinstance(exc, UpstreamAnswer):
        # An upstream's own 5xx, passed on: a failing upstream (worth a retry), not a fault
        # in llmedge.
        name = "UNAVAILABLE"
    return name


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
