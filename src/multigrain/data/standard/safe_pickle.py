"""Load a pickle that may only hold dicts, lists, numbers, strings and numpy arrays.

The revisited Oxford/Paris ground truth ships as a pickle; a plain `pickle.load` would run
any callable the file names. This unpickler resolves only the globals numpy needs to rebuild
arrays and scalars, under both the numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) names.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from multigrain.runtime.errors import MultiGrainError

_ALLOWED = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol 0-2 pickles store array bytes as latin-1 text
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise MultiGrainError(
                f"refusing to load {module}.{name} from a pickle: only dicts, lists, numbers, "
                "strings and numpy arrays are allowed (is this the right ground-truth file?)"
            )
        # numpy 2 renamed numpy.core to numpy._core; resolve the name that exists here.
        if module.startswith("numpy.core"):
            try:
                target = importlib.import_module(module.replace("numpy.core", "numpy._core", 1))
            except ModuleNotFoundError:
                target = importlib.import_module(module)
            return getattr(target, name)
        return super().find_class(module, name)


def load_safe_pickle(path: Path) -> Any:
    """Unpickle `path` allowing only plain containers and numpy arrays; else MultiGrainError."""
    try:
        with path.open("rb") as handle:
            return _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except MultiGrainError as error:
        raise MultiGrainError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise MultiGrainError(f"{path} is not a readable pickle: {error}") from error
