"""Notebook states, their groups, and the one table of legal transitions."""

from django.db import models


class State(models.TextChoices):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    RESTARTING = "RESTARTING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


# Counted against the project's GPU quota.
QUOTA_STATES = frozenset(
    {State.QUEUED, State.STARTING, State.RUNNING, State.RESTARTING, State.STOPPING}
)
# An editor is (or should be) up.
UP_STATES = frozenset({State.RUNNING, State.RESTARTING})
# Holding capacity on a host that was lost: they start again elsewhere.
HOST_LOST_STATES = frozenset({State.STARTING, State.RUNNING, State.RESTARTING})
# Waiting on a task; reconcile re-sends it if it seems lost.
TRANSITIONAL_STATES = frozenset({State.STARTING, State.STOPPING, State.DELETING, State.RESTARTING})
TERMINAL_STATES = frozenset({State.DELETED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.STARTING, State.STOPPED, State.DELETING, State.FAILED}),
    State.STARTING: frozenset({State.RUNNING, State.FAILED, State.QUEUED, State.RESTARTING}),
    State.RUNNING: frozenset({State.STOPPING, State.RESTARTING, State.DELETING}),
    # From RESTARTING after its host was lost: placed again (STARTING) or
    # waiting for capacity (QUEUED).
    State.RESTARTING: frozenset(
        {State.RUNNING, State.STOPPING, State.FAILED, State.STARTING, State.QUEUED}
    ),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.STOPPED: frozenset({State.QUEUED, State.DELETING}),
    State.FAILED: frozenset({State.QUEUED, State.DELETING}),
    State.DELETING: frozenset({State.DELETED}),
    State.DELETED: frozenset(),
}

# What a user action does from each state it is allowed in.
ACTIONS: dict[str, dict[State, State]] = {
    "start": {State.STOPPED: State.QUEUED, State.FAILED: State.QUEUED},
    "stop": {
        State.QUEUED: State.STOPPED,
        State.RUNNING: State.STOPPING,
        State.RESTARTING: State.STOPPING,
    },
    "delete": {
        State.QUEUED: State.DELETING,
        State.RUNNING: State.DELETING,
        State.STOPPED: State.DELETING,
        State.FAILED: State.DELETING,
    },
}


class InfoCode(models.TextChoices):
    """Why a notebook is where it is (OVH's `info.code`)."""

    OK = "OK"
    WAITING_FOR_CAPACITY = "WAITING_FOR_CAPACITY"
    PLACED = "PLACED"
    RESTORING_WORKSPACE = "RESTORING_WORKSPACE"
    STARTING_EDITOR = "STARTING_EDITOR"
    RUNNING = "RUNNING"
    USER_STOP = "USER_STOP"
    USER_START = "USER_START"
    USER_DELETE = "USER_DELETE"
    SAVING_WORKSPACE = "SAVING_WORKSPACE"
    STOPPED = "STOPPED"
    DELETED = "DELETED"
    EDITOR_DIED = "EDITOR_DIED"
    START_FAILED = "START_FAILED"
    BACKUP_FAILED = "BACKUP_FAILED"
    BACKUP_RETRY = "BACKUP_RETRY"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    PULLING_DATA = "PULLING_DATA"
    PUSHING_DATA = "PUSHING_DATA"
    DATA_SYNC_FAILED = "DATA_SYNC_FAILED"
    HOST_LOST = "HOST_LOST"
    IDLE_WARNING = "IDLE_WARNING"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    MAX_RUNTIME = "MAX_RUNTIME"
    TIMEOUT_RESTART = "TIMEOUT_RESTART"
    FORKED = "FORKED"
    SSH_SESSION = "SSH_SESSION"


# A notebook stopped for one of these ends FAILED rather than STOPPED.
FAILURE_CODES = frozenset(
    {
        InfoCode.EDITOR_DIED,
        InfoCode.START_FAILED,
        InfoCode.BACKUP_FAILED,
        InfoCode.DATA_SYNC_FAILED,
    }
)


def is_legal(from_state: str, to_state: str) -> bool:
    return State(to_state) in TRANSITIONS[State(from_state)]
