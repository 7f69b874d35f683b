"""The configuration reference, written from the settings schema (:mod:`fapm.settings`).

The documentation site builds its "Configuration reference" page from :func:`reference_markdown`
at build time (``docs/hooks.py``), so the page lists exactly the keys the parser accepts, with
their types, defaults, ranges and one-line descriptions: a key added, renamed or re-ranged in
:mod:`fapm.settings` changes the page with it.

Every settings group reachable from :class:`fapm.settings.RunSettings` is listed: ``model``
(one table per model family), its nested groups (``model.search``), ``backbone``, ``data`` (one
table per layout), ``thresholds``, then the top-level keys. Optionally, the value each key takes
in the shipped configs (``conf/train.yaml`` with its defaults, composed by Hydra) is shown beside
the schema default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union

from fapm import settings as schema


@dataclasses.dataclass(frozen=True)
class Group:
    """One table of the reference: the keys of one settings class under a prefix."""

    prefix: str
    cls: type
    title: str


def _options(tp: Any) -> list[type]:
    """The members of a union annotation (``X | Y``, ``Union[X, Y]``), or ``[tp]``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and issubclass(tp, schema.Settings)


def _title(prefix: str, cls: type, siblings: int) -> str:
    """``model``, or with siblings ``model`` — memory-bank family: FAPM, ... (from the docstring)."""
    doc = (cls.__doc__ or "").strip().split("\n")[0].rstrip(".")
    doc = re.sub(r"^``[\w.*]+``[:,]?\s*(of the |for the |for )?", "", doc).replace("``", "`")
    return f"`{prefix}` — {doc}" if siblings > 1 and doc else f"`{prefix}`"


def _discriminators(cls: type) -> dict[str, Any]:
    """The single-value ``Literal`` fields (``family``, ``type``) that pick ``cls`` among its siblings."""
    hints = typing.get_type_hints(cls, vars(schema))
    return {
        f.name: typing.get_args(hints[f.name])[0]
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal and len(typing.get_args(hints[f.name])) == 1
    }


def groups(root: type = schema.RunSettings) -> Iterator[Group]:
    """Every settings group under ``root``, depth first, nested groups after their parent."""
    hints = typing.get_type_hints(root, vars(schema))
    for field in dataclasses.fields(root):
        members = [m for m in _options(hints[field.name]) if _is_group(m)]
        for cls in members:
            yield from _walk(field.name, cls, len(members))


def _walk(prefix: str, cls: type, siblings: int) -> Iterator[Group]:
    yield Group(prefix, cls, _title(prefix, cls, siblings))
    hints = typing.get_type_hints(cls, vars(schema))
    for field in dataclasses.fields(cls):
        if field.init and _is_group(hints[field.name]):
            yield from _walk(f"{prefix}.{field.name}", hints[field.name], 1)


def type_text(tp: Any) -> str:
    """A reader's spelling of an annotation: ``int``, ``int or null``, ``one of: a, b``, ``list of float``."""
    if tp is Any:
        return "any (a Hydra node)"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        options = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(options)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of: " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return "list of " + ", ".join(type_text(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A value as it is written in YAML or on the command line."""
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "`null`"
    if value == "":
        return '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in value) + "]`"
    if _is_group(type(value)):
        return "(group below)"
    return f"`{value}`"


def accepted_text(meta: Mapping[str, Any]) -> str:
    """The range of a field (``in [0.0, 1.0]``, ``>= 1``) and whether it has an extra check."""
    parts = []
    text = schema._range_text(meta)
    if text:
        parts.append(text)
    if meta.get("check") is not None:
        name = meta["check"].__name__.strip("_").replace("_", " ")
        parts.append(f"checked: {name}")
    return "; ".join(parts)


def _lookup(config: Any, key: str) -> Any:
    """``key`` of the composed ``config``, resolved; unresolvable here (``${hydra:...}``): as written."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, key, default=dataclasses.MISSING, throw_on_missing=False)
    except Exception:  # an interpolation that needs a running Hydra job (paths): show it as written
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        return f"{node._get_node(leaf)._value()}" if node is not None else dataclasses.MISSING
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return tuple(value) if isinstance(value, list) else value


_YAML_COMMENT = re.compile(r"^(?P<key>\w+):[^#\n]*#\s*(?P<text>.+?)\s*$", re.M)


def yaml_comments(group: Group) -> dict[str, str]:
    """The trailing comments of ``group``'s keys in its config files (``conf/<prefix>/*.yaml``).

    The meaning of a key the schema gives no ``doc`` for: the file of the group's own default
    (``fapm.yaml``, ``mvtec.yaml``, ...) is read first, the other files of the folder after it,
    skipping files of a sibling (another ``family`` / ``type``).
    """
    from fapm.conf import CONFIG_DIR

    folder = CONFIG_DIR.joinpath(*group.prefix.split("."))
    if not folder.is_dir():
        return {}
    picks = set(map(str, _discriminators(group.cls).values()))
    name = next((f.default for f in dataclasses.fields(group.cls) if f.name in ("name", "backend")), None)
    picks.add(str(name))
    files = sorted(folder.glob("*.yaml"), key=lambda f: (f.stem not in picks, f.name))
    comments: dict[str, str] = {}
    for path in files:
        text = path.read_text()
        if any(
            re.search(rf"^{key}:\s*(\S+)", text, re.M) and re.search(rf"^{key}:\s*(\S+)", text, re.M)[1] != str(value)
            for key, value in _discriminators(group.cls).items()
        ):
            continue
        for match in _YAML_COMMENT.finditer(text):
            comments.setdefault(match["key"], match["text"])
    return comments


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def group_table(group: Group, shipped: Any = None) -> str:
    """The Markdown table of one group; with ``shipped`` a column of the shipped configs' values."""
    hints = typing.get_type_hints(group.cls, vars(schema))
    header = ["key", "type", "default", "accepted", "meaning"]
    if shipped is not None and any(
        _lookup(shipped, f"{group.prefix}.{name}") != value for name, value in _discriminators(group.cls).items()
    ):
        shipped = None  # the shipped configs use a sibling (another data layout or model family)
    if shipped is not None:
        header.insert(3, "`fapm train`")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    comments = yaml_comments(group)
    for field in dataclasses.fields(group.cls):
        if not field.init or _is_group(hints[field.name]):
            continue
        key = f"{group.prefix}.{field.name}"
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        meaning = field.metadata.get("doc") or comments.get(field.name, "")
        row = [f"`{key}`", type_text(hints[field.name]), value_text(default), accepted_text(field.metadata), meaning]
        if shipped is not None:
            value = _lookup(shipped, key)
            row.insert(3, "" if value is dataclasses.MISSING or value == default else value_text(value))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def shipped_values() -> Any:
    """``conf/train.yaml`` composed with its defaults (the demo); ``None`` without Hydra."""
    try:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
    except ImportError:
        return None
    GlobalHydra.instance().clear()
    with initialize_config_module("fapm.conf", version_base="1.3"):
        return compose("train")


INTRO = """# Configuration reference

<!-- Generated at build time by fapm.settings_reference from src/fapm/settings.py: not a file in the repository. -->

Every key that `model`, `backbone`, `data` and `thresholds` accept, as the strict schema
(`fapm.settings`) parses them: a wrong type, a value out of range or an unknown key stops a run
before any work, with one error naming the key. This page is written from that schema when the
documentation is built, so it cannot drift from the code.

*meaning* is the schema's own description of the key, else the comment beside the key in its
config file under `conf/`. *default* is the schema's default (what a key left out of a config means); *`fapm train`* is
the value the shipped configs give it when it differs (`conf/train.yaml` with its defaults: the
demo, `backbone=efficientnet_lite0`, `model=fapm`). Config groups (`model=patchcore`,
`backbone=wide_resnet50_2`, `data=mvtec`, ...) are files under `conf/`
([Configuration](configuration.md)); the trainer, logger, callbacks, paths and Hydra keys are
Lightning's and Hydra's own and are documented in those YAML files.
"""


def reference_markdown(shipped: Any = None) -> str:
    """The whole reference page."""
    parts = [INTRO]
    for group in groups():
        parts.append(f"\n## {group.title}\n\n{group_table(group, shipped)}")
    top = [f.name for f in dataclasses.fields(schema.RunSettings) if not any(_is_group(m) for m in _options(
        typing.get_type_hints(schema.RunSettings, vars(schema))[f.name]))]
    if top:
        parts.append("\n## Top-level keys\n\n| key | type |\n|---|---|\n" + "".join(
            f"| `{name}` | {type_text(typing.get_type_hints(schema.RunSettings, vars(schema))[name])} |\n" for name in top))
    return "".join(parts)
