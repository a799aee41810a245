"""asyncssh's process API, with the sftp subsystem handed to the process like any other.

asyncssh serves the `sftp` subsystem itself when asked (from the files of the
machine it runs on) and refuses it otherwise. The gateway must relay it, and a
host's endpoint must run OpenSSH's sftp-server inside the notebook: so sessions
here are processes whatever they ask for (a shell, a command, the sftp
subsystem), and `process.subsystem` says which. Servers return one from
`session_requested` (and pass no `process_factory`).
"""

from collections.abc import Awaitable, Callable

import asyncssh
from asyncssh.constants import EXTENDED_DATA_STDERR

SUBSYSTEMS = frozenset({"sftp"})


class Process(asyncssh.SSHServerProcess):
    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess], Awaitable[None]]):
        super().__init__(handler, None, 0, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem in SUBSYSTEMS

    def session_started(self) -> None:
        chan = self._chan
        stdin = asyncssh.SSHReader(self, chan)
        stdout = asyncssh.SSHWriter(self, chan)
        stderr = asyncssh.SSHWriter(self, chan, EXTENDED_DATA_STDERR)
        chan.get_connection().create_task(self._start_process(stdin, stdout, stderr), stdin.logger)
