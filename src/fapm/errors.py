"""User errors: problems the user fixes in a path, a file or a config value, not bugs.

The command-line entry points (``fapm ...``, ``python train.py``) print a user error as one
line plus a hint and exit with status 1 (2 for usage errors), without a traceback unless
``HYDRA_FULL_ERROR=1`` or ``--verbose`` asks for it (:mod:`fapm.cli`). Anything else is a bug
and keeps its traceback.

New error types derive from :class:`FapmError`. The older ones (``DataError``,
``BackboneError``, ``ModelFileError``, ``GridError``, ``ThresholdError``)
predate it and are listed in :data:`USER_ERROR_TYPES` by name, so that this module imports
nothing heavy (``fapm --help`` must stay fast); once they derive from :class:`FapmError` their
entries here can go.
"""

from __future__ import annotations

import importlib
from typing import ClassVar


class FapmError(Exception):
    """Base class of the errors a user can fix; the message names the path, file or key.

    Attributes:
        hint: one line telling what to do next, shown under the message (class default,
            overridable per instance with ``hint=``).
        exit_code: process exit status for the command line (1; 2 for usage errors).
    """

    hint: ClassVar[str] = ""
    exit_code: ClassVar[int] = 1

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint  # type: ignore[misc]  # per-instance override of the class hint


class UsageError(FapmError):
    """The command line itself is wrong (unknown command, missing ``-m`` for a sweep)."""

    exit_code = 2
    hint = "see `fapm --help` or `fapm <command> --help`"


#: Error types that predate :class:`FapmError`: ``"module:Class" -> hint``. Resolved lazily;
#: a subclass comes before its base (the first match gives the hint).
USER_ERROR_TYPES: dict[str, str] = {
    "fapm.inference.images:InputError": "check input= (an image, a folder or a quoted glob; docs/predict.md)",
    "fapm.data.errors:DataError": "check data.root and data.category (docs/own_data.md)",
    "fapm.models.features:BackboneError": "check the backbone.* keys (docs/install.md, Backbone weights)",
    "fapm.models.patch_memory:GridError": "model.grid must have at most as many rows and columns as every feature map of the backbone",
    "fapm.model_file:ModelFileError": "ckpt_path must be a model.safetensors written by `fapm train` (docs/predict.md)",
    "fapm.inference.thresholds:ThresholdError": "see docs/predict.md for the threshold choices",
}

#: Hydra/OmegaConf exceptions that mean a wrong override or a missing required key (usage
#: errors, exit status 2) → hint. Not every Hydra/OmegaConf error: an ``InstantiationException``
#: wraps an error raised by a constructor (see :func:`find_user_error`), and a missing key read
#: by our code is a bug.
CONFIG_ERROR_TYPES: dict[str, str] = {
    # unknown config group option or key, missing config file
    "hydra.errors:ConfigCompositionException": "overrides are key=value or group=option; `fapm <command> --help` "
    "lists the groups, `fapm <command> --cfg job` the keys",
    "hydra.errors:OverrideParseException": "overrides are key=value (quote values with spaces or brackets)",
    # a required value not given (`ckpt_path: ???`)
    "omegaconf.errors:MissingMandatoryValue": "give it on the command line as key=value",
}

#: Wrappers whose ``__cause__`` is the real error (Hydra wraps what a ``_target_`` raises).
WRAPPER_TYPES: tuple[str, ...] = ("hydra.errors:InstantiationException",)


def _resolve(spec: str) -> type[BaseException] | None:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # a module that cannot load is not a user error type
        return None


def user_error_types() -> tuple[type[BaseException], ...]:
    """:class:`FapmError` and every older user error type that can be imported."""
    found = [_resolve(spec) for spec in USER_ERROR_TYPES]
    return (FapmError, *(t for t in found if t is not None))


def config_error_types() -> tuple[type[BaseException], ...]:
    """The Hydra/OmegaConf exception bases of :data:`CONFIG_ERROR_TYPES` that can be imported."""
    found = [_resolve(spec) for spec in CONFIG_ERROR_TYPES]
    return tuple(t for t in found if t is not None)


def find_user_error(error: BaseException) -> BaseException | None:
    """``error`` itself, or the user/config error a wrapper holds as ``__cause__``; else None."""
    known = user_error_types() + config_error_types()
    wrappers = tuple(t for t in map(_resolve, WRAPPER_TYPES) if t is not None)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, known):
            return current
        if not isinstance(current, wrappers):
            return None
        current = current.__cause__
    return None


def hint_for(error: BaseException) -> str:
    """The hint for ``error``: its own ``hint`` attribute, else the table's, else ``""``."""
    own = getattr(error, "hint", None)
    if isinstance(own, str) and own:
        return own
    for spec, hint in USER_ERROR_TYPES.items():
        cls = _resolve(spec)
        if cls is not None and isinstance(error, cls):
            return hint
    for spec, hint in CONFIG_ERROR_TYPES.items():
        cls = _resolve(spec)
        if cls is not None and isinstance(error, cls):
            return hint
    return ""


def exit_code_for(error: BaseException) -> int:
    """1 for a user error, 2 for a usage/config error (``exit_code`` attribute wins)."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int):
        return code
    return 2 if isinstance(error, config_error_types()) else 1
