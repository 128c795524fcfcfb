"""cxrcore: datasets, models, training loops, metrics and CAM for chest X-ray classification."""
from cxrcore.settings import Settings, make_settings, settings

__all__ = ["Settings", "make_settings", "settings"]
__version__ = "0.1.0"
