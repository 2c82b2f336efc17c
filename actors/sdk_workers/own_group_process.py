"""A child process that no signal to the bridge's process group can reach.

A Ctrl-C, or a service manager stopping the bridge's group, sends SIGINT or
SIGTERM to every process in the group. The bridge drains on it; its SDK
worker processes must not die of it, or the rooms they hold are lost before
the drain leaves them. So a worker runs in a process group of its own.

Moving a child to a new group is not instant: between its fork and its
setpgid, a signal to the old group still reaches it (subprocess's
process_group=0 loses a worker to it, seen in CI). Here the child is spawned
with SIGINT and SIGTERM blocked: one sent in that window stays pending, and
the child discards it once it ignores both (see
discard_group_signals_and_unblock, which a worker calls first thing).
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Mapping, Sequence

import trio

#: The signals a group stop sends; held pending from spawn until the child ignores them.
GROUP_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
#: The descriptor number the child finds its passed socket at.
PASSED_FD = 3
#: Where the child finds the bridge's own stderr, for log lines of its own that
#: need not pass through the redactor its fd 2 leads to (see spawn).
LOG_FD = 4


class OwnGroupProcess:
    """A child process in a process group of its own (see the module's docstring).

    Like trio.Process, reduced to what a supervisor needs: ``pid``,
    ``returncode`` (None while it runs; -N when killed by signal N),
    ``wait()`` and ``kill()``.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._wait_lock = trio.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # no pidfd (Linux < 5.3, or a seccomp filter): wait in a thread instead
            self._pidfd = None

    @classmethod
    def spawn(cls, command: Sequence[str], environment: Mapping[str, str], passed: int,
              stderr: int | None = None) -> OwnGroupProcess:
        """Start ``command`` (its first item an absolute path) with ``environment``,
        stdin from /dev/null, stdout shared with the bridge, and the
        descriptor ``passed`` at PASSED_FD (no other descriptor of ours).
        Its stderr is ``stderr`` (a pipe the bridge reads, for instance),
        with the bridge's own stderr at LOG_FD; or, when None, the bridge's.

        Raises:
            OSError: the process could not be started.
        """
        given = {PASSED_FD: passed} if stderr is None else {PASSED_FD: passed, 2: stderr, LOG_FD: 2}
        # Each source is copied above every target first: a source that is also a target (the bridge's
        # stderr, 2, goes to LOG_FD while the pipe goes to 2) would otherwise be overwritten before it is
        # copied, and dup2 onto itself would leave it close-on-exec with older C libraries.
        sources: dict[int, int] = {}
        try:
            for target, source in given.items():
                sources[target] = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, max(given) + 1)
            pid = os.posix_spawn(
                command[0], list(command), dict(environment),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              *((os.POSIX_SPAWN_DUP2, source, target) for target, source in sources.items())],
                setpgroup=0,
                setsigmask=GROUP_STOP_SIGNALS,
                # What Python's own start leaves ignored (subprocess's restore_signals does the same).
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        finally:
            for source in sources.values():
                os.close(source)
        return cls(pid)

    async def wait(self) -> int:
        """Wait for the process to exit (reaping it) and return its returncode."""
        async with self._wait_lock:
            if self.returncode is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                    os.close(self._pidfd)
                    self._pidfd = None
                else:  # (WNOWAIT: a thread abandoned on cancel must not reap it)
                    await trio.to_thread.run_sync(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT,
                                                  abandon_on_cancel=True)
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """Send SIGKILL, unless it has been reaped already (its pid may be another's by then)."""
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


def discard_group_signals_and_unblock() -> None:
    """For the child, first thing: ignore SIGINT and SIGTERM, dropping one
    that arrived while it started, then unblock them."""
    for number in GROUP_STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)  # setting SIG_IGN discards a pending signal (POSIX)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_STOP_SIGNALS)
