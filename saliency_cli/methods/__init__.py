"""Attribution methods. Importing this package registers all of them; the
registry (`registry.names()`) is the only list of method names, in the
order below (the order `saliency methods` shows)."""

# isort: off
from . import gradient  # noqa: F401
from . import gradient_x_input  # noqa: F401
from . import deconvnet  # noqa: F401
from . import guided_backprop  # noqa: F401
from . import smoothgrad  # noqa: F401
from . import integrated_gradients  # noqa: F401
from . import cam  # noqa: F401
from . import grad_cam  # noqa: F401
from . import guided_grad_cam  # noqa: F401
from . import grad_cam_plus_plus  # noqa: F401
from . import layer_cam  # noqa: F401
from . import score_cam  # noqa: F401
from . import eigen_cam  # noqa: F401
from . import rise  # noqa: F401
from . import occlusion  # noqa: F401
from . import attention_rollout  # noqa: F401
from . import d_rise  # noqa: F401
# isort: on
from .registry import (  # noqa: F401
    Attribution,
    ClassificationMethod,
    DetectionMethod,
    Method,
    get,
    names,
    register,
    register_detection,
)
