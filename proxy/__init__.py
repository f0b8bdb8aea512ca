"""llmedge: an LLM routing edge proxy."""

__version__ = "0.1.0"

from .config import Config, load  # noqa: E402

__all__ = ("Config", "__version__", "load")
