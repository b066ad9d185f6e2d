"""GLEE: general object foundation model for images and videos, in clean PyTorch."""

from glee import _torchvision_shim

_torchvision_shim.install()

from glee.config import GleeConfig  # noqa: E402
from glee.modeling.glee_model import GleeModel, GleeOutput  # noqa: E402

__all__ = ["GleeConfig", "GleeModel", "GleeOutput"]
__version__ = "0.1.0"
