"""AlignmentState: fitness EMA / decay and usage decay, hand-computed over two rounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.alignment import AlignmentState, Feedback, loss_reward


def test_gate_prob_fitness_ema_and_decay_over_two_rounds() -> None:
    # Prepare
    state = AlignmentState(["a", "b"], 3, fitness_ema=0.3, fitness_decay=0.95)
    # Execute: round 1, only a reports
    state.update_fitness({"a": Feedback(mean_gate_prob=np.array([0.5, 0.3, 0.2]))})
    # Assert: F[a] = 0.3 * p, F[b] stays 0 (decayed 0)
    np.testing.assert_allclose(state.fitness, [[0.15, 0.09, 0.06], [0.0, 0.0, 0.0]])
    # Execute: round 2, only b reports; a did not participate and decays
    state.update_fitness({"b": Feedback(mean_gate_prob=np.array([0.1, 0.1, 0.8]))})
    # Assert
    np.testing.assert_allclose(
        state.fitness, [[0.1425, 0.0855, 0.057], [0.03, 0.03, 0.24]], rtol=0, atol=1e-12
    )


def test_gate_prob_second_update_of_same_client_is_ema() -> None:
    state = AlignmentState(["a"], 3)
    state.update_fitness({"a": Feedback(mean_gate_prob=np.array([0.5, 0.3, 0.2]))})
    state.update_fitness({"a": Feedback(mean_gate_prob=np.array([1.0, 0.0, 0.0]))})
    # 0.7 * [0.15, 0.09, 0.06] + 0.3 * [1, 0, 0]
    np.testing.assert_allclose(state.fitness, [[0.405, 0.063, 0.042]], atol=1e-12)


def test_loss_reward_updates_trained_experts_and_decays_the_rest() -> None:
    # Prepare: loss 2.0 -> 1.5 gives r = 0.25; samples [30, 0, 10] share [1, -, 1/3]
    state = AlignmentState(["a", "b"], 3, reward="loss", init_fitness=0.1)
    fb = Feedback(
        trained_experts=[2, 0],
        loss_first=2.0,
        loss_last=1.5,
        samples_per_expert=np.array([30.0, 0.0, 10.0]),
    )
    # Execute
    state.update_fitness({"a": fb})
    # Assert: e0: 0.7*0.1 + 0.3*0.25; e1 decays 0.95*0.1; e2: 0.7*0.1 + 0.3*0.25/3; b decays
    np.testing.assert_allclose(
        state.fitness, [[0.145, 0.095, 0.095], [0.095, 0.095, 0.095]], atol=1e-12
    )


def test_loss_reward_is_normalised_and_clipped() -> None:
    assert loss_reward(2.0, 1.5) == 0.25
    assert loss_reward(2.0, 3.0) == 0.0
    assert loss_reward(2.0, 0.0) == 1.0
    assert loss_reward(0.0, 0.0) == 0.0


def test_usage_decay_over_two_rounds() -> None:
    state = AlignmentState(2, 3, usage_decay=0.9)
    state.update_usage(np.array([10.0, 0.0, 5.0]))
    state.update_usage(np.array([0.0, 4.0, 5.0]))
    np.testing.assert_allclose(state.usage, [9.0, 4.0, 9.5])


def test_integer_clients_become_string_ids_and_add_client() -> None:
    state = AlignmentState(2, 2, init_fitness=0.5)
    assert state.client_ids == ("0", "1")
    assert state.add_client("new") == 2
    np.testing.assert_allclose(state.fitness_rows(["new"]), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="already registered"):
        state.add_client("new")


def test_bad_feedback_raises_and_leaves_state_untouched() -> None:
    state = AlignmentState(["a", "b"], 2, init_fitness=0.2)
    with pytest.raises(ValueError, match="mean_gate_prob"):
        state.update_fitness({"a": Feedback(mean_gate_prob=np.array([0.5, 0.5])), "b": Feedback()})
    np.testing.assert_allclose(state.fitness, 0.2)
    with pytest.raises(KeyError, match="zzz"):
        state.update_fitness({"zzz": Feedback(mean_gate_prob=np.array([0.5, 0.5]))})
    with pytest.raises(ValueError, match="load"):
        state.update_usage(np.array([1.0, -1.0]))


def test_state_arrays_are_read_only() -> None:
    state = AlignmentState(1, 2)
    with pytest.raises(ValueError):
        state.fitness[0, 0] = 1.0
    with pytest.raises(ValueError):
        state.usage[0] = 1.0
