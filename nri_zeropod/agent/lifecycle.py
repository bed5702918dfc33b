"""The life of a managed container's app, as a transition table.

::

    RUNNING --checkpoint--> CHECKPOINTING --checkpointed--> SCALED_DOWN
       ^                        |                               |
       +--checkpoint_failed-----+                            restore
       ^                                                        v
       +------------------------restored------------------- RESTORING --restore_failed--> RESTORE_FAILED

``stop`` (the container is stopped or removed) leads from every state to
STOPPED. Any other (state, event) pair is an error that names both.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    RUNNING = "RUNNING"
    CHECKPOINTING = "CHECKPOINTING"
    SCALED_DOWN = "SCALED_DOWN"
    RESTORING = "RESTORING"
    RESTORE_FAILED = "RESTORE_FAILED"
    STOPPED = "STOPPED"


class Event(str, Enum):
    CHECKPOINT = "checkpoint"
    CHECKPOINTED = "checkpointed"
    CHECKPOINT_FAILED = "checkpoint_failed"
    RESTORE = "restore"
    RESTORED = "restored"
    RESTORE_FAILED = "restore_failed"
    STOP = "stop"


S, E = State, Event

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.RUNNING, E.CHECKPOINT): S.CHECKPOINTING,
    (S.CHECKPOINTING, E.CHECKPOINTED): S.SCALED_DOWN,
    (S.CHECKPOINTING, E.CHECKPOINT_FAILED): S.RUNNING,
    (S.SCALED_DOWN, E.RESTORE): S.RESTORING,
    (S.RESTORING, E.RESTORED): S.RUNNING,
    (S.RESTORING, E.RESTORE_FAILED): S.RESTORE_FAILED,
    **{(state, E.STOP): S.STOPPED for state in State},
}

# What the keeper inside the container reads from its state file in each state.
KEEPER_WORD: dict[State, str] = {
    S.RUNNING: "running",
    S.CHECKPOINTING: "checkpointing",
    S.SCALED_DOWN: "scaled-down",
    S.RESTORING: "restoring",
    S.RESTORE_FAILED: "restore-failed",  # not a suspended state: the keeper ends the container
    S.STOPPED: "running",
}


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event) -> None:
        self.state, self.event = state, event
        super().__init__(f"cannot {event.value} a container that is {state.value}")


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
