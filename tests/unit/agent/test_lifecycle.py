"""The lifecycle table, every (state, event) pair."""

from __future__ import annotations

import itertools

import pytest

from nri_zeropod.agent.lifecycle import KEEPER_WORD, TRANSITIONS, Event, IllegalTransition, State, next_state

S, E = State, Event

EXPECTED = {
    (S.RUNNING, E.CHECKPOINT): S.CHECKPOINTING,
    (S.CHECKPOINTING, E.CHECKPOINTED): S.SCALED_DOWN,
    (S.CHECKPOINTING, E.CHECKPOINT_FAILED): S.RUNNING,
    (S.SCALED_DOWN, E.RESTORE): S.RESTORING,
    (S.RESTORING, E.RESTORED): S.RUNNING,
    (S.RESTORING, E.RESTORE_FAILED): S.RESTORE_FAILED,
    **{(s, E.STOP): S.STOPPED for s in State},
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_every_pair(state: State, event: Event) -> None:
    if (state, event) in EXPECTED:
        assert next_state(state, event) is EXPECTED[(state, event)]
    else:
        with pytest.raises(IllegalTransition) as err:
            next_state(state, event)
        # The error names both the state and the event.
        assert state.value in str(err.value) and event.value in str(err.value)


def test_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_keeper_never_waits_in_a_final_state() -> None:
    # After a failed restore or a stop the keeper must end the container when the app is gone.
    assert KEEPER_WORD[S.RESTORE_FAILED] == "restore-failed"
    assert KEEPER_WORD[S.STOPPED] == "running"
    assert {KEEPER_WORD[s] for s in (S.CHECKPOINTING, S.SCALED_DOWN, S.RESTORING)} == {
        "checkpointing", "scaled-down", "restoring"
    }
