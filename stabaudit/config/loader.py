"""The audit YAML: loaded, validated and resolved to models; errors name the file, line and key path."""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from stabaudit.config.schema import (
    SETTINGS_KEYS,
    ConfigFile,
    ConfigInput,
    ModelEntry,
    Settings,
    SettingsInput,
    TrajectoryEntry,
    WaiverEntry,
    explain,
)
from stabaudit.errors import ConfigError
from stabaudit.paths import check_path_text
from stabaudit.report.model import Waiver

if TYPE_CHECKING:
    import yaml

DEFAULT_CONFIG = "stabaudit.yaml"
MAX_DEPTH = 64  # far deeper than the schema; stops hostile nesting before it reaches the validator
# A config of many models is a few KiB; far above that it is a mistake or an attack on the parser
# (PyYAML's pure-Python parser spent 50 s on 6 MB): refused before parsing.
MAX_CONFIG_BYTES = 1024**2
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

Loc = tuple[int | str, ...]


@dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """One model file to audit, with its effective settings and the waivers that apply to it."""

    path: Path  # absolute
    settings: Settings
    waivers: tuple[Waiver, ...]
    entry: str  # the config entry it came from, e.g. "models[1]"


# ---- errors ----------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    """The first line of an error's text (YAML errors span several lines with a caret)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def key_path(loc: Loc) -> str:
    """``models[1].thresholds.lipschitz`` from ``("models", 1, "thresholds", "lipschitz")``."""
    text = ""
    for segment in loc:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else str(segment))
    return text or "(top level)"


def _line(node: Any) -> int | None:
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else None


def _fail(path: Path, line: int | None, loc: Loc | str, message: str) -> ConfigError:
    where = f"{path}:{line}" if line is not None else str(path)
    keys = loc if isinstance(loc, str) else key_path(loc)
    return ConfigError(f"{where}: {keys}: {message}", path=str(path))


def _walk(root: yaml.Node, loc: Loc) -> tuple[yaml.Node, yaml.Node | None]:
    """The deepest node along ``loc`` and, when the last step was a mapping key, that key's node."""
    import yaml

    node, key_node = root, None
    for segment in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(segment, str):
            pair = next(((k, v) for k, v in node.value if str(k.value) == segment), None)
            if pair is None:
                break
            key_node, node = pair
        elif isinstance(node, yaml.SequenceNode) and isinstance(segment, int) and segment < len(node.value):
            key_node, node = None, node.value[segment]
        else:
            break
    return node, key_node


# ---- YAML nodes -> plain data ------------------------------------------------------------------------
class _Builder:
    """Plain data from a composed node tree, refusing what yaml would accept silently: duplicate keys
    (yaml keeps the last), keys that are lists or mappings, aliases that contain themselves."""

    def __init__(self, path: Path) -> None:
        from yaml.constructor import SafeConstructor

        self.path = path
        self.constructor = SafeConstructor()
        self.done: dict[int, Any] = {}  # aliases share one node: build it once (no billion laughs)
        self.active: set[int] = set()

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        import yaml

        if id(node) in self.done:
            return self.done[id(node)]
        if id(node) in self.active:
            raise _fail(self.path, _line(node), loc, "invalid value: an alias that contains itself")
        if len(loc) > MAX_DEPTH:
            raise _fail(self.path, _line(node), loc[:1], "invalid value: nested too deeply")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
                value: Any = self._mapping(node, loc)
            elif isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
                value = [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            else:
                value = self._construct(node, loc)
        finally:
            self.active.discard(id(node))
        self.done[id(node)] = value
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        import yaml

        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                where = key_path(loc) + ".(key)" if loc else "(key)"
                raise _fail(self.path, _line(key_node), where, "expected a plain name as key, not a list or mapping")
            key = str(key_node.value)
            if key in out:
                raise _fail(self.path, _line(key_node), (*loc, key), "duplicate key")
            out[key] = self.build(value_node, (*loc, key))
        return out

    def _construct(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except RecursionError:
            raise _fail(self.path, _line(node), loc, "invalid value: nested too deeply") from None
        except Exception as exc:  # SafeConstructor fails in many ways: "!!int x", "!!int" empty, bad dates
            raise _fail(self.path, _line(node), loc, f"invalid value: {_one_line(exc)}") from None


def _translate(path: Path, root: yaml.Node, exc: ValidationError) -> ConfigError:
    """The first error in the file's order, in one line of our words."""
    best: tuple[tuple[int, bool], ConfigError] | None = None
    for error in exc.errors(include_url=False):
        loc, message = explain(tuple(error["loc"]), error["type"], error["msg"])
        node, key_node = _walk(root, loc)
        if error["type"] == "extra_forbidden" and key_node is not None:
            node = key_node  # an unknown key: point at the key, not its value
        line = _line(node)
        # A missing key is reported at its mapping's line; an unknown key there (a misspelling of
        # the missing one, most often) is the better message.
        rank = (line or 0, error["type"] == "missing")
        if best is None or rank < best[0]:
            best = (rank, _fail(path, line, loc, message))
    assert best is not None  # a ValidationError holds at least one error
    return best[1]


# ---- loading --------------------------------------------------------------------------------------------
def _loader() -> type:
    """SafeLoader (libyaml's C parser, CSafeLoader, where PyYAML has it) that also reads exponent
    floats without a dot (1e5, 2E-3) as numbers, as YAML 1.2 does; YAML 1.1's resolver leaves them
    strings, a surprise in a file full of thresholds."""
    import re

    import yaml

    base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type, misc]
        pass

    Loader.yaml_implicit_resolvers = {
        key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _read(p: Path) -> str:
    """The config's text; a file above MAX_CONFIG_BYTES is refused before it is parsed (the size
    is checked on what is read, so a device or a growing file cannot get past it either)."""
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise _too_large(p, size)
        with p.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise _too_large(p, None)
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config: {exc}", path=str(p)) from None


def _too_large(p: Path, size: int | None) -> ConfigError:
    what = f"{size} bytes" if size is not None else "more bytes"
    return ConfigError(f"{p}: the config holds {what}, above the limit of {MAX_CONFIG_BYTES} bytes; refused",
                       path=str(p))


def load_config(path: str | Path) -> ConfigFile:
    """Parse and validate a config (single-audit or batch form); every error is a ConfigError (exit 2)."""
    import yaml

    p = Path(path)
    check_path_text(p, error=ConfigError)  # before the file system sees it (NUL: ValueError)
    text = _read(p)
    try:
        root = yaml.compose(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = _one_line(getattr(exc, "problem", None) or exc)
        if "maximum nesting depth" in problem:  # libyaml's own limit (1000): the same words as ours
            problem = "nested too deeply"
        raise ConfigError(f"{where}: invalid YAML: {problem}", path=str(p)) from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply", path=str(p)) from None
    if root is None:
        return ConfigFile(path=p, defaults=Settings(), models=(), waivers=())
    if not isinstance(root, yaml.MappingNode) or root.tag != _MAP:
        raise _fail(p, _line(root), "(top level)", "expected a mapping of settings")
    data = _Builder(p).build(root, ())
    base = p.absolute().parent
    try:
        raw = ConfigInput.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise _translate(p, root, exc) from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply", path=str(p)) from None

    flat = SettingsInput(**{key: getattr(raw, key) for key in SETTINGS_KEYS if key in raw.model_fields_set})
    defaults = flat.to_settings(base)
    if raw.defaults is not None:
        for key in SETTINGS_KEYS:
            if key in raw.model_fields_set and key in raw.defaults.model_fields_set:
                other = _line(_walk(root, ("defaults", key))[1])
                raise _fail(p, _line(_walk(root, (key,))[1]), (key,),
                            f"also set under defaults: (line {other}); give each setting once")
        defaults = defaults.merged(raw.defaults.to_settings(base))
    models = tuple(
        ModelEntry(path=entry.path, settings=entry.to_settings(base), line=_line(_walk(root, ("models", i, "path"))[0]) or 0)
        for i, entry in enumerate(raw.models or ())
    )
    waivers = tuple(
        WaiverEntry(check=w.check, model=w.model, reason=w.reason, expires=w.expires) for w in raw.waivers or ()
    )
    trajectory = tuple(
        TrajectoryEntry(path=e.path, step=e.step, line=_line(_walk(root, ("trajectory", i, "path"))[0]) or 0)
        for i, e in enumerate(raw.trajectory or ())
    )
    return ConfigFile(path=p, defaults=defaults, models=models, waivers=waivers, trajectory=trajectory)


def find_default_config(cwd: Path) -> Path | None:
    """``cwd/stabaudit.yaml`` when it is a file: the config used when none is named."""
    candidate = cwd / DEFAULT_CONFIG
    return candidate if candidate.is_file() else None


# ---- resolving the model entries ----------------------------------------------------------------------
def _expand(config: ConfigFile, base: Path, index: int, entry: ModelEntry) -> list[Path]:
    """The files an entry names: a glob's matches (sorted) or the one plain path."""
    loc: Loc = ("models", index, "path")
    if glob.has_magic(entry.path):
        absolute = os.path.isabs(entry.path)
        matches = glob.glob(entry.path, recursive=True) if absolute else glob.glob(entry.path, root_dir=base, recursive=True)
        files = sorted({Path(os.path.normpath(base / m)) for m in matches if (base / m).is_file()})
        if not files:
            raise _fail(config.path, entry.line, loc, f"no file matches {entry.path!r}")
        return files
    target = Path(os.path.normpath(base / entry.path))
    if not target.exists():
        raise _fail(config.path, entry.line, loc, f"no such file {entry.path!r}")
    if not target.is_file():
        raise _fail(config.path, entry.line, loc, f"not a file: {entry.path!r}")
    return [target]


def _matches(pattern: str, file: Path, base: Path, written: str) -> bool:
    """A waiver's glob against the model's path relative to the config's directory, as written in
    its entry, or absolute."""
    relative = Path(os.path.relpath(file, base)).as_posix()
    candidates = {relative, file.as_posix()}
    if not glob.has_magic(written):
        candidates.add(Path(written).as_posix())
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def _waivers(config: ConfigFile, file: Path, base: Path, written: str) -> tuple[Waiver, ...]:
    return tuple(
        Waiver(check=w.check, reason=w.reason, model=w.model,
               expires=w.expires.isoformat() if w.expires is not None else "")
        for w in config.waivers if _matches(w.model, file, base, written)
    )


def resolve_one(config: ConfigFile, model: Path) -> ResolvedModel:
    """The settings and waivers of one model audited on its own (``stabaudit check``): its entry
    when the config lists it, else the defaults; waivers match as in a batch."""
    file = Path(os.path.normpath(model.absolute()))
    for resolved in resolve_models(config):
        if resolved.path == file:
            return resolved
    base = config.path.absolute().parent
    return ResolvedModel(
        path=file,
        settings=config.defaults,
        waivers=_waivers(config, file, base, str(model)),
        entry="defaults",
    )


def resolve_models(config: ConfigFile) -> list[ResolvedModel]:
    """Every model file of the config, each once (the first entry naming it wins), with its
    settings (defaults merged with the entry's) and its waivers; [] for the single-audit form."""
    base = config.path.absolute().parent
    seen: set[Path] = set()
    out: list[ResolvedModel] = []
    for index, entry in enumerate(config.models):
        settings = config.defaults.merged(entry.settings)
        for file in _expand(config, base, index, entry):
            if file in seen:
                continue
            seen.add(file)
            waivers = _waivers(config, file, base, entry.path)
            out.append(ResolvedModel(path=file, settings=settings, waivers=waivers, entry=f"models[{index}]"))
    return out
