"""The key names every layer shares: a store's arrays, a training batch, an observation, a policy's inputs."""

from __future__ import annotations

STATE_KEY = "observation.state"
ACTION_KEY = "action"
TASK_KEY = "task"
IMAGE_PREFIX = "observation.images."


def camera_key(camera: str) -> str:
    """'agentview' -> 'observation.images.agentview'."""
    return IMAGE_PREFIX + camera


def camera_name(key: str) -> str | None:
    """'observation.images.agentview' -> 'agentview'; None for a key that is not a camera."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else None
