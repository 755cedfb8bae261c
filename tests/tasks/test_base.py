"""tasks.base.LazyRandom: seeded on first use, the same numbers as random.Random(seed)."""

import random

import pytest

from tasks.base import LazyRandom


def draws(rng: random.Random) -> list:
    items = list(range(10))
    rng.shuffle(items)
    return [rng.random(), rng.choice(range(100)), rng.sample(range(50), 5), rng.randint(1, 9),
            rng.choices("abc", weights=[1, 2, 3]), rng.getrandbits(96), rng.gauss(0, 1), items,
            rng.uniform(2, 3)]


@pytest.mark.parametrize("seed", ["7:0:0", "123:45:system_prompt", ""])
def test_draws_the_same_numbers_as_random_random(seed):
    assert draws(LazyRandom(seed)) == draws(random.Random(seed))
    assert LazyRandom(seed).getstate() == random.Random(seed).getstate()


def test_reseeding_and_restoring_state_behave_as_random_random():
    lazy, eager = LazyRandom("a"), random.Random("a")
    lazy.seed("b")
    eager.seed("b")
    assert draws(lazy) == draws(eager)
    state = random.Random("c").getstate()
    lazy, eager = LazyRandom("a"), random.Random("a")
    lazy.setstate(state)
    eager.setstate(state)
    assert draws(lazy) == draws(eager)
