"""e5jax: the E5 text-embedding recipe in JAX / Flax NNX.

The entry points a notebook needs, all importable from here:

    from e5jax import Encoder, load, train, evaluate, export

`load(folder)` gives an `Encoder` from an export or a training workdir;
`train`, `evaluate` and `export` do what `e5jax train / eval / export` do.
Each is imported on first use, so `import e5jax` does not import JAX.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# name -> (module, attribute), imported when first asked for (PEP 562).
_LAZY = {
    "Encoder": ("e5jax.model.encoder", "Encoder"),
    "load": ("e5jax.loading", "load"),
    "evaluate": ("e5jax.api", "evaluate"),
    "Config": ("e5jax.config", "Config"),
    "load_config": ("e5jax.config", "load_config"),
    "E5Error": ("e5jax.errors", "E5Error"),
}

# `train` and `export` are also the names of a subpackage and a module. Whenever
# either is imported (by anyone), Python sets it on this package, replacing any
# function of that name; so the submodule itself is made callable and calls the
# function in e5jax/api.py. Without this, `e5jax.train(...)` would work until
# something imported e5jax.train.loop, and then fail with "'module' object is
# not callable".
_CALLABLE_SUBMODULES = ("train", "export")

__all__ = ["Encoder", "load", "train", "evaluate", "export", "Config", "load_config", "E5Error"]


class _CallableModule(types.ModuleType):
    """A submodule that, called, runs e5jax.api's function of the same name."""

    def __call__(self, *args, **kwargs):
        api = importlib.import_module("e5jax.api")
        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _CALLABLE_SUBMODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name):
    if name in _CALLABLE_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets it (callable) on the package
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'e5jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
