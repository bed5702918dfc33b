"""Settings of the Kubernetes client, as nested frozen dataclasses.

Every default says why it is what it is. The agent uses the defaults; tests
pass smaller timeouts and back-offs so that retries happen in milliseconds
instead of seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HttpSettings:
    """One HTTP request to the API server."""

    # An API server on the cluster network answers a TCP+TLS handshake in
    # milliseconds; 5 s covers a busy control plane without leaving a write
    # stuck for long behind a black-holed address.
    connect_timeout: float = 5.0
    # Our requests are tiny (one pod, one patch); client-go's default for
    # such calls is in the same range. A hung request must end so that the
    # writer can retry it and later writes for the pod are not held forever.
    request_timeout: float = 15.0
    # Idle keep-alive connections kept per client: the agent talks to one
    # server with a handful of concurrent writes.
    max_idle_connections: int = 4
    user_agent: str = "nri-zeropod"


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter: ``initial * factor**n``, capped at ``maximum``."""

    # Half a second lets a restarting API server or a 5xx blip pass quickly.
    initial: float = 0.5
    # Thirty seconds keeps a node's agents from hammering a struggling control
    # plane while still noticing recovery within half a minute.
    maximum: float = 30.0
    factor: float = 2.0
    # Spread retries of many agents (one per node) so they do not arrive together.
    jitter: float = 0.2

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """The pause before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


@dataclass(frozen=True)
class WatchSettings:
    """The namespace cache's list + watch loop."""

    # Ask the server to end each watch after about five minutes: the same
    # order as client-go's reflector (5-10 min), so a silently broken
    # connection is replaced regularly even when no line ever arrives.
    timeout_seconds: int = 300
    # Give up on a watch connection that has been silent this much longer
    # than the server-side timeout (bookmarks and the server's own close
    # should have arrived by then): a half-open TCP connection.
    idle_margin: float = 30.0
    # A watch that ends sooner than this without any event is treated like
    # an error (back off), so a server that closes at once is not hammered.
    min_healthy_watch: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True)
class WriterSettings:
    """The background writer of status labels, events and resizes."""

    # Ten attempts with the default back-off span about three minutes: long
    # enough for an API server restart, short enough that a write for a pod
    # that cannot be written does not linger; the next state change queues a
    # fresh write anyway.
    max_attempts: int = 10
    # Pods written at the same time: a node has at most a few hundred pods and
    # writes are small, so a few in flight keep up without bursts at the server.
    max_concurrency: int = 4
    # Writes waiting per pod before the oldest event is dropped: labels and
    # resizes coalesce, so only events can pile up, and only while the API is down.
    max_pending_per_pod: int = 64
    backoff: Backoff = field(default_factory=Backoff)

