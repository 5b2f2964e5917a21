"""Name -> class lookup by convention, once for models and datasets (pix2pix's find_*_using_name).

`models/<name>_model.py` defines `<Name>Model` and `datasets/<name>_dataset.py` defines `<Name>Dataset`
(the class name compared case-insensitively without underscores). Names are discovered with pkgutil,
so they feed argparse `choices` and `--help`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

KINDS = {"model": ("models", "_model"), "dataset": ("datasets", "_dataset")}


@cache
def available(kind: str) -> tuple[str, ...]:
    """Sorted names of every `<name>_model.py` (kind='model') or `<name>_dataset.py` (kind='dataset')."""
    package, suffix = KINDS[kind]
    pkg = importlib.import_module(package)
    names = [m.name[: -len(suffix)] for m in pkgutil.iter_modules(pkg.__path__)
             if m.name.endswith(suffix) and not m.name.startswith("base")]
    return tuple(sorted(names))


def find(kind: str, name: str) -> type:
    """The class registered as `name`; ValueError listing the available names when there is none."""
    package, suffix = KINDS[kind]
    choices = available(kind)
    if name not in choices:
        raise ValueError(f"unknown --{'model' if kind == 'model' else 'dataset_mode'} '{name}'; "
                         f"available: {', '.join(choices) or '(none)'}")
    module = importlib.import_module(f"{package}.{name}{suffix}")
    target = (name + suffix).replace("_", "").lower()
    for attr, obj in vars(module).items():
        if attr.lower() == target and isinstance(obj, type):
            return obj
    raise ValueError(f"{package}/{name}{suffix}.py defines no class named like {target} (case-insensitive)")
