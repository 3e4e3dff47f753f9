"""saliency-cli: batch saliency maps for PyTorch vision models.

    import saliency_cli as sal
    sal.methods()
    maps = sal.attribute(model, images, method="grad-cam")
    explanations = sal.explain_detections(detector, images, method="d-rise")
"""

from .api import attribute, explain_detections, methods
from .detection import DetectionExplanation, Detections
from .errors import SaliencyError

__version__ = "0.1.0"
__all__ = ["attribute", "explain_detections", "methods", "Detections", "DetectionExplanation",
           "SaliencyError", "__version__"]
