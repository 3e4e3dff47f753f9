"""Tasks: what kind of model is explained, and how a batch of it is explained.

Importing this package registers the built-in tasks; `registry.names()` is
the only list of task names. A new task is one module here with a
`@register`ed subclass of `Task` (see base.py), imported below.
"""

# isort: off
from .registry import get, names, register, remove  # noqa: F401
from .base import Bound, Progress, Run, Task  # noqa: F401
from . import classification  # noqa: F401
from . import detection  # noqa: F401
# isort: on
