"""The task registry: the only list of task names (the config's `task:`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SaliencyError, did_you_mean

if TYPE_CHECKING:
    from .base import Task

_TASKS: dict[str, type[Task]] = {}


def register(task: type[Task]) -> type[Task]:
    """Class decorator registering a task under its `name`; a duplicate name is a bug and raises."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def remove(name: str) -> None:
    """Unregister a task (for tasks registered at run time, e.g. in tests)."""
    _TASKS.pop(name, None)


def get(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise SaliencyError(f"task: {did_you_mean(name, _TASKS, what='task')}") from None


def names() -> list[str]:
    return list(_TASKS)
