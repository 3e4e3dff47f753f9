"""saliency-cli: batch saliency maps for PyTorch vision models.

    import saliency_cli as sal
    sal.methods()
    maps = sal.attribute(model, images, method="grad-cam")
    explanations = sal.explain_detections(detector, images, method="d-rise")

The API's names load torch on first use, not on `import saliency_cli`: the
command line's `--help` and `saliency verify` start without it (importing
torch takes about 1.8 s).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import SaliencyError

if TYPE_CHECKING:
    from .api import attribute, explain_detections, methods
    from .detection import DetectionExplanation, Detections

__version__ = "0.1.0"
__all__ = ["attribute", "explain_detections", "methods", "Detections", "DetectionExplanation",
           "SaliencyError", "__version__"]

_LAZY = {"attribute": ".api", "explain_detections": ".api", "methods": ".api",
         "Detections": ".detection", "DetectionExplanation": ".detection"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This module's type: `saliency_cli.methods` stays the API's function.
    The methods' subpackage bears that name too, and the import system sets
    the package's attribute to it when it is first imported, which is now
    after `import saliency_cli` (by the first command or API call that needs
    the registry); that binding is not kept (the subpackage is reached
    through imports, never through this attribute), any other is."""

    @property
    def methods(self) -> Any:
        return self.__dict__["methods"] if "methods" in self.__dict__ else __getattr__("methods")

    @methods.setter
    def methods(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            self.__dict__["methods"] = value

    @methods.deleter
    def methods(self) -> None:
        self.__dict__.pop("methods", None)


sys.modules[__name__].__class__ = _Package
