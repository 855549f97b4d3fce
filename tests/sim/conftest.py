"""Shared LIBERO environments: building one takes 5-15 s on 2 cores, so each is built once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vla.sim.libero import LiberoEnv

SUITE, TASK = "libero_object", 1  # pick up the cream cheese: the expert's quickest libero_object task
IMAGE_SIZE = 32  # small renders keep camera tests affordable


@pytest.fixture(scope="session")
def state_env() -> Iterator[LiberoEnv]:
    env = LiberoEnv(SUITE, TASK, cameras=())
    yield env
    env.close()


@pytest.fixture(scope="session")
def camera_env() -> Iterator[LiberoEnv]:
    env = LiberoEnv(SUITE, TASK, image_size=IMAGE_SIZE)
    yield env
    env.close()
