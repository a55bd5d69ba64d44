"""pathgen: whole-slide-image tiling and Gen-SIS self-supervised learning for computational pathology."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathgen")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

# Heavy modules (torch, openslide) are imported on first use so that `pathgen --help` stays fast.
_LAZY = {
    "open_store": "pathgen.store",
    "PatchDataset": "pathgen.store",
    "open_slide": "pathgen.slide",
    "load_encoder": "pathgen.ssl.export",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathgen' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
