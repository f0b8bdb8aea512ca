"""AWS credentials for ``provider: bedrock``, and the side task that renews those that expire.

They come from the AWS SDKs' default chain, as botocore resolves it: the environment
variables, the shared credentials and config files (``AWS_PROFILE`` picks the profile,
which may use SSO, assume-role or ``credential_process``), container credentials and the
instance role. Resolving may ask the network, so it runs where routers are built, off the
event loop.

Signing never waits: each request is signed with a frozen copy (``AwsCredentials.frozen``).
Credentials that expire are renewed by ``CredentialRenewal`` in a worker thread once
botocore says they are due (15 minutes before they expire), and the frozen copy is swapped
on the loop. A renewal that fails is logged and tried again; the current credentials keep
signing until AWS refuses them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("llmedge")

# How often the renewal task asks whether credentials are due. Renewal is due 15 minutes
# before they expire, so a look every few seconds is early enough, and it also spaces the
# renewals of a source whose credentials are always due (a 15-minute STS session).
CHECK_INTERVAL_S = 5.0


class AwsCredentials:
    """What one configuration load found: ``frozen`` signs, ``problem`` says why there is
    nothing to sign with (the deployment is then unusable)."""

    def __init__(self, source: Any = None, problem: str | None = None) -> None:
        self._source = source
        self.problem = problem
        self.method = source.method if source is not None else None
        self.frozen = source.get_frozen_credentials() if source is not None else None

    @property
    def expires(self) -> bool:
        # botocore's RefreshableCredentials; static keys have no refresh_needed.
        return hasattr(self._source, "refresh_needed")

    def due(self) -> bool:
        return self.expires and self._source.refresh_needed()

    def renewed(self) -> Any:
        """Fresh frozen credentials. Blocks (botocore may call STS, SSO, a process or the
        instance metadata service): run it in a thread."""
        return self._source.get_frozen_credentials()


def resolve() -> AwsCredentials:
    """The default chain's credentials. Blocking: called where the configuration is built."""
    import botocore.exceptions
    import botocore.session
    # It says where it found them at INFO, and a failed renewal with a traceback: the
    # renewal task reports failures itself, in one line.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)
    try:
        source = botocore.session.Session().get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        return AwsCredentials(problem="AWS credentials could not be loaded: %s" % exc)
    if source is None:
        return AwsCredentials(problem=(
            "no AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
            "the shared credentials or config file, container credentials or an instance "
            "role)"))
    return AwsCredentials(source)


class CredentialRenewal:
    """Renews a router's expiring credentials. The server starts one with each router and
    closes it when the router is replaced or the server stops."""

    def __init__(self, credentials: Iterable[AwsCredentials],
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self._expiring = list({id(c): c for c in credentials if c.expires}.values())
        self._interval = check_interval_s
        self._task: asyncio.Task | None = None
        self._failing: set[int] = set()   # which have failed since their last renewal

    def start(self) -> None:
        if self._expiring:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="aws credential renewal")
            self._task.add_done_callback(self._on_done)
            log.info("aws: renewing %s credentials before they expire",
                     ", ".join(sorted({c.method for c in self._expiring})))

    @staticmethod
    def _on_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("aws credential renewal stopped", exc_info=task.exception())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            for credentials in self._expiring:
                if credentials.due():
                    await self._renew(loop, credentials)

    async def _renew(self, loop: asyncio.AbstractEventLoop, credentials: AwsCredentials) -> None:
        old = credentials.frozen
        try:
            fresh = await loop.run_in_executor(None, credentials.renewed)
        except Exception as exc:   # noqa: BLE001 — any failure of the chain is reported
            fresh, reason = old, "%s: %s" % (type(exc).__name__, exc)
        else:
            # Inside the advisory window botocore swallows a failed refresh and hands back
            # what it had: the same keys, still due.
            reason = ("the source gave no new credentials"
                      if fresh == old and credentials.due() else None)
        credentials.frozen = fresh
        if reason is None:
            if id(credentials) in self._failing:
                self._failing.discard(id(credentials))
                log.info("aws: %s credentials renewed", credentials.method)
        elif id(credentials) not in self._failing:
            self._failing.add(id(credentials))
            log.warning("aws: %s credentials could not be renewed (%s); still signing with "
                        "the current ones, trying again", credentials.method, reason)
