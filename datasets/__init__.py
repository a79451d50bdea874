"""The data loaders: GTEA-61 (gtea61.py) and EGTEA Gaze+ (egtea.py), their clip transforms and the
frame cache. The tools that make the data they read are in datasets/prepare/.

Names are imported lazily so that the data tools (`python -m datasets.prepare`, which import
datasets.markers) do not pay for importing torch."""
import importlib

_EXPORTS = {
    "GTEA61": "gtea61", "DatasetError": "gtea61", "detect_layout": "gtea61",
    "IMAGENET_MEAN": "gtea61", "IMAGENET_STD": "gtea61", "FLOW_MEAN": "gtea61",
    "FLOW_STD": "gtea61", "MIN_FRAMES": "gtea61", "MODALITIES": "gtea61",
    "ClipParams": "transforms", "ClipTransform": "transforms",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
