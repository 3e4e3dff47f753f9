"""saliency-cli: batch saliency maps for PyTorch vision models.

    import saliency_cli as sal
    sal.methods()
    maps = sal.attribute(model, images, method="grad-cam")
"""

from .api import attribute, methods
from .errors import SaliencyError

__version__ = "0.1.0"
__all__ = ["attribute", "methods", "SaliencyError", "__version__"]
