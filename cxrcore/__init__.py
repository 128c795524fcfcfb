"""cxrcore: datasets, models, training loops, metrics and CAM for chest X-ray classification."""
from cxrcore.settings import Settings, settings

__all__ = ["Settings", "settings"]
__version__ = "0.1.0"
