"""The one table of legal transitions, and `services.transition` that enforces it."""

import pytest
from django.utils import timezone

from nbcloud.notebooks import services
from nbcloud.notebooks.models import Notebook, NotebookEvent
from nbcloud.notebooks.states import (
    ACTIONS,
    HOST_LOST_STATES,
    QUOTA_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    InfoCode,
    State,
    is_legal,
)


def test_the_table_covers_every_state():
    assert set(TRANSITIONS) == set(State)
    for targets in TRANSITIONS.values():
        assert targets <= set(State)


def test_no_state_leads_to_itself_and_only_terminal_states_are_dead_ends():
    for state, targets in TRANSITIONS.items():
        assert state not in targets, state
        assert (not targets) == (state in TERMINAL_STATES), state


def test_every_state_is_reachable_from_queued():
    reachable, frontier = {State.QUEUED}, [State.QUEUED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()] - reachable:
            reachable.add(target)
            frontier.append(target)
    assert reachable == set(State)


def test_actions_only_lead_to_legal_transitions():
    assert set(ACTIONS) == {"start", "stop", "delete"}
    for action, moves in ACTIONS.items():
        assert moves, action
        for from_state, to_state in moves.items():
            assert is_legal(from_state, to_state), (action, from_state, to_state)


def test_actions_refuse_what_they_must():
    assert State.STOPPED not in ACTIONS["stop"]
    assert State.DELETING not in ACTIONS["start"]
    assert State.DELETED not in ACTIONS["delete"]
    assert State.RUNNING not in ACTIONS["start"]


def test_quota_states_are_states():
    assert set(State) >= QUOTA_STATES
    assert State.STOPPED not in QUOTA_STATES and State.FAILED not in QUOTA_STATES


@pytest.fixture
def notebook(alpha):
    now = timezone.now()
    return Notebook.objects.create(
        project=alpha,
        name="nb",
        framework_id="conda",
        framework_version="py311",
        editor_id="jupyterlab",
        flavor="ai1-1-cpu",
        cpu=1,
        region="GRA",
        state=State.QUEUED,
        queued_at=now,
    )


@pytest.mark.django_db
def test_transition_moves_and_writes_one_event(notebook):
    services.transition(
        notebook, State.STOPPED, actor="tester", code=InfoCode.USER_STOP, message="bye"
    )
    assert notebook.state == State.STOPPED
    assert Notebook.objects.get(pk=notebook.pk).state == State.STOPPED
    event = NotebookEvent.objects.get(notebook=notebook)
    assert (event.actor, event.from_state, event.to_state, event.code, event.message) == (
        "tester",
        State.QUEUED,
        State.STOPPED,
        InfoCode.USER_STOP,
        "bye",
    )


@pytest.mark.django_db
def test_transition_refuses_an_illegal_move(notebook):
    with pytest.raises(services.InvalidState) as refused:
        services.transition(notebook, State.RUNNING, actor="tester", code=InfoCode.RUNNING)
    assert "QUEUED" in str(refused.value)
    assert refused.value.code == "invalid_state"
    assert Notebook.objects.get(pk=notebook.pk).state == State.QUEUED
    assert notebook.state == State.QUEUED
    assert not NotebookEvent.objects.exists()


@pytest.mark.django_db
def test_transition_refuses_a_stale_object_and_writes_no_event(notebook):
    stale = Notebook.objects.get(pk=notebook.pk)
    services.transition(notebook, State.STOPPED, actor="first", code=InfoCode.USER_STOP)
    assert stale.state == State.QUEUED  # it has not seen the change
    with pytest.raises(services.InvalidState) as refused:
        services.transition(stale, State.STARTING, actor="second", code=InfoCode.PLACED)
    assert "STOPPED" in str(refused.value)
    assert Notebook.objects.get(pk=notebook.pk).state == State.STOPPED
    assert stale.state == State.QUEUED
    assert list(NotebookEvent.objects.values_list("actor", flat=True)) == ["first"]


@pytest.mark.django_db
def test_deleted_is_final(notebook):
    services.transition(notebook, State.DELETING, actor="t", code=InfoCode.USER_DELETE)
    services.transition(notebook, State.DELETED, actor="t", code=InfoCode.DELETED)
    for target in State:
        with pytest.raises(services.InvalidState):
            services.transition(notebook, target, actor="t", code=InfoCode.OK)
    assert NotebookEvent.objects.filter(notebook=notebook).count() == 2


def test_a_lost_hosts_notebooks_can_restart_elsewhere_or_wait():
    for state in HOST_LOST_STATES - {State.RESTARTING}:
        assert is_legal(state, State.RESTARTING), state
    # Placed again on another host, or back in the queue when none has room.
    assert is_legal(State.RESTARTING, State.STARTING)
    assert is_legal(State.RESTARTING, State.QUEUED)
