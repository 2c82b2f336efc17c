"""A small, general actor runtime on Trio: mailboxes, actors, supervisors.

Nothing here knows about LiveKit or gRPC; the bridge's actors build on it.
"""

from .actor import Actor
from .buffer import DropOldestBuffer
from .mailbox import ActorGone, Mailbox, MailboxFull, Reply, Request
from .supervisor import NEVER_RESTART, Child, ChildState, RestartPolicy, Supervisor

__all__ = [
    "Actor",
    "ActorGone",
    "Child",
    "ChildState",
    "DropOldestBuffer",
    "Mailbox",
    "MailboxFull",
    "NEVER_RESTART",
    "Reply",
    "Request",
    "RestartPolicy",
    "Supervisor",
]
