"""A small, general actor runtime on Trio: mailboxes, actors, supervisors.

Nothing here knows about LiveKit or gRPC; the bridge's actors build on it.
"""

from .actor import Actor
from .buffer import DropOldestBuffer
from .cancellation import only_cancelled
from .mailbox import ActorGone, Mailbox, MailboxFull, Reply, Request
from .supervisor import (NEVER_RESTART, Backoff, Child, ChildGivenUp, ChildState, Restart, RestartPolicy, ShutdownOrder,
                         Supervisor, open_supervisor)

__all__ = [
    "Actor",
    "ActorGone",
    "Backoff",
    "Child",
    "ChildGivenUp",
    "ChildState",
    "DropOldestBuffer",
    "Mailbox",
    "MailboxFull",
    "NEVER_RESTART",
    "Reply",
    "Request",
    "Restart",
    "RestartPolicy",
    "ShutdownOrder",
    "Supervisor",
    "open_supervisor",
    "only_cancelled",
]
