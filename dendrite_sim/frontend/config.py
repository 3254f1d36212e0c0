"""Run configurations: TOML files, validation, ``--set`` overrides and object builders.

A configuration is a TOML document with these sections::

    [model]     name = "<registry name>" and the keyword arguments of the model class
    [data]      name = "<data set>" and the keyword arguments of its loader, plus
                max_train / max_test (keep the first n examples of a split)
    [schedule]  the keyword arguments of model.default_schedule(...), or an explicit
                phases = [{name, duration, teach, plastic, trace}, ...]
    [learner]   name = "<learner registry name>" (default "dendritic") and the keyword
                arguments of that learner class (its schedule comes from [schedule], its
                solver settings from [solver])
    [training]  epochs, batch_size, mode, loss, eta_hat, backprop_lr, baselines, ... (TRAINING)
    [solver]    ODE and equilibrium solver settings                         (SOLVER)
    [output]    dir, dpi, example, points, examples, figures                (OUTPUT)
    [sweep]     grid / random search of ``dendrite-sim sweep`` (dendrite_sim.frontend.sweep;
                ignored by a single run)

The schema of ``model``, ``data``, ``schedule`` and ``learner`` is read from the signatures of
the model class, the data loader, ``default_schedule`` and the learner class (a new model or
learner needs no schema of its own); the other sections have fixed schemas.

``training.mode``, ``training.loss`` and ``training.eta_hat`` are the same settings as the
learner's ``mode``, ``loss`` and ``eta_hat`` (kept in step; giving both with different values
is an error). ``training.baselines`` lists the learners trained next to the configured one on
the same data, initial weights and batches (default ``["backprop"]``; ``training.baseline =
false`` means none). Unknown sections and keys, and values of the wrong type,
raise :class:`ConfigError` (a ``ValueError``) naming the key, e.g. ``training.epochs``.

Models are found automatically: every module in ``dendrite_sim.models`` (the ``models/``
folder) is imported and each :class:`~dendrite_sim.dynamics.model.NetworkModel` subclass defined
there is registered under the module's name (``models/two_phase.py`` -> ``two_phase``; a
module defining several models registers them by their snake-cased class names) and under
its lower-cased class name. Default configurations live in
``dendrite_sim/configs/<name>.toml``.

Python use::

    from dendrite_sim.frontend.config import load_config, build_model, build_schedule, build_data
    cfg = load_config("two_phase", ["training.epochs=1"])
    model = build_model(cfg); schedule = build_schedule(cfg, model); data = build_data(cfg)
"""
from __future__ import annotations

import copy
import importlib
import importlib.resources
import inspect
import json
import math
import pkgutil
import re
from pathlib import Path

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

__all__ = ["ConfigError", "SECTIONS", "TRAINING", "SOLVER", "OUTPUT", "model_registry",
           "model_class", "load_config", "parse_override", "apply_overrides",
           "validate_config", "dumps_toml", "build_model", "build_schedule", "build_data",
           "learner_options", "build_learner", "default_config_path", "resolve_source",
           "config_names", "learner_schema", "unset_keys", "build_update_rule"]

SECTIONS = ("model", "data", "schedule", "learner", "training", "solver", "output", "sweep")


class ConfigError(ValueError):
    """A configuration is invalid (unknown section or key, wrong type, unknown model)."""


# ----------------------------------------------------------------------------------------------
# fixed schemas: key -> (type spec, default or None for "unset")
# ----------------------------------------------------------------------------------------------
TRAINING = {
    "epochs": ("int", 3),
    "batch_size": ("int", 32),
    "eval_every": ("number", 1.0),
    "seed": ("int", 0),
    "mode": ("str", "quasi_static"),
    "loss": ("str", "cross_entropy"),
    "eta_hat": ("number", 0.1),
    "backprop_lr": ("number", 0.1),
    "baseline": ("bool", True),          # false: no baselines (overrides baselines)
    "baselines": ("list[str]", None),    # learner names; default ["backprop"]
    "max_eval": ("int", None),
    "diagnostics_every": ("int", None),
    "probe_size": ("int", None),
    "n_eig": ("int", 4),
    "lr_decay": ("number", 1.0),         # updates of epoch k scaled by lr_decay**k (train)
    "optimizer": ("str", "sgd"),         # update rule: sgd, momentum, adam (train)
    "optimizer_lr": ("number", None),    # Adam's step size (default 1e-3)
    "momentum": ("number", None),        # momentum's beta, Adam's beta_1 (default 0.9)
    "beta2": ("number", None),           # Adam's beta_2 (default 0.999)
}
SOLVER = {
    "method": ("str", "dopri5"),        # integrator (dendrite_sim.dynamics.integrators.METHODS)
    "rtol": ("number", 1e-6),
    "atol": ("number", 1e-8),
    "step_size": ("number", None),      # fixed-step methods only
    "max_abs": ("number", 1e6),
    "tol": ("number", None),            # equilibrium residual (None: dtype default)
    "rate_tol": ("number", None),       # quasi-static, feedback-only phases (learning.present)
    "max_iter": ("int", 50),
    "equilibrium": ("str", "auto"),     # fixed_point method
    "dense_limit": ("int", None),
    "max_seconds": ("number", None),    # budget of one equilibrium solve (wall time)
    "max_evals": ("int", None),         # ... and in vector-field evaluations
}
OUTPUT = {
    "dir": ("str", None),               # run directory (default runs/<model>-<time>)
    "dpi": ("int", 110),
    "example": ("int", 0),              # test example shown in the activity figure
    "points": ("int", 400),             # time points of activity figures
    "examples": ("int", 4),             # test examples used by `analyze`
    "figures": ("bool", True),          # write figures/*.png at the end of a run
}
DATA_EXTRA = {
    "max_train": ("int", None),
    "max_test": ("int", None),
}
PHASE_KEYS = {"name": "str", "duration": "number", "teach": "bool", "plastic": "list[str]",
              "trace": "bool"}
#: model keyword arguments that take one of several types (the rest: inferred from defaults)
POLYMORPHIC = {
    "sizes": ("list[int]",),
    "eta": ("number", "list[number]"),
    "transfer": ("str", "list[str]"),
}
DTYPES = ("float32", "float64")
_FIXED = {"training": TRAINING, "solver": SOLVER, "output": OUTPUT}
#: learner keyword arguments set from other sections, never in [learner]
INJECTED = {"schedule": "[schedule]", "present_kwargs": "[solver]",
            "fixed_point_kwargs": "[solver]"}
#: learner keyword arguments that are also [training] keys (kept equal)
SHARED_TRAINING = ("mode", "loss", "eta_hat")
DEFAULT_LEARNER = "dendritic"
DEFAULT_BASELINES = ["backprop"]


# ----------------------------------------------------------------------------------------------
# model registry
# ----------------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


_REGISTRY: dict | None = None
_BROKEN: dict = {}


def model_registry() -> dict:
    """``{name: class}`` for every model in ``dendrite_sim.models`` (module docstring).

    Primary names (module names) come first; lower-cased class names are aliases. A module
    that fails to import is left out (asking for it reports the import error).
    """
    global _REGISTRY
    if _REGISTRY is not None:
        return _REGISTRY
    import dendrite_sim.models as pkg
    from dendrite_sim.dynamics.model import NetworkModel

    primary, aliases = {}, {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as err:  # a broken model file must not break the others
            _BROKEN[info.name] = f"{type(err).__name__}: {err}"
            continue
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and issubclass(obj, NetworkModel)
                   and obj is not NetworkModel and obj.__module__ == module.__name__
                   and not obj.__name__.startswith("_")]
        classes.sort(key=lambda c: c.__name__)
        for cls in classes:
            name = info.name if len(classes) == 1 else _snake(cls.__name__)
            primary.setdefault(name, cls)
            aliases.setdefault(cls.__name__.lower(), cls)
    _REGISTRY = dict(primary)
    for name, cls in aliases.items():
        _REGISTRY.setdefault(name, cls)
    return _REGISTRY


def model_names() -> list[str]:
    """Primary registry names (one per model)."""
    reg = model_registry()
    seen, out = set(), []
    for name, cls in reg.items():
        if cls not in seen:
            seen.add(cls)
            out.append(name)
    return out


def canonical_name(cls) -> str:
    """The primary registry name of a model class."""
    for name, c in model_registry().items():
        if c is cls:
            return name
    return _snake(cls.__name__)


def model_class(name: str):
    """The model class registered as ``name`` (case-insensitive); ``ConfigError`` otherwise."""
    reg = model_registry()
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be a string; got {name!r}")
    key = name.strip().lower()
    if key in reg:
        return reg[key]
    if key in _BROKEN:
        raise ConfigError(f"model {name!r} failed to import: {_BROKEN[key]}")
    raise ConfigError(f"unknown model {name!r}; available models: {', '.join(model_names())}")


# ----------------------------------------------------------------------------------------------
# types
# ----------------------------------------------------------------------------------------------
_TYPE_WORDS = {"int": "an integer", "number": "a number (not nan)", "bool": "a boolean (true/false)",
               "str": "a string", "list[int]": "a list of integers",
               "list[number]": "a list of numbers", "list[str]": "a list of strings",
               "dtype": f"one of {list(DTYPES)}", "phases": "a list of phase tables",
               "scalar": "a number or a string"}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    """A real number that is not NaN (no setting means NaN; inf may, e.g. a budget)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _matches(value, spec: str) -> bool:
    if spec == "int":
        return _is_int(value)
    if spec == "number":
        return _is_number(value)
    if spec == "bool":
        return isinstance(value, bool)
    if spec == "str":
        return isinstance(value, str)
    if spec == "dtype":
        return isinstance(value, str) and value in DTYPES
    if spec == "scalar":
        return _is_number(value) or isinstance(value, str)
    if spec.startswith("list["):
        inner = spec[5:-1]
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if spec == "phases":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    raise AssertionError(spec)


def check_type(key: str, value, specs) -> None:
    """Raise ``ConfigError`` naming ``key`` unless ``value`` matches one of ``specs``."""
    specs = (specs,) if isinstance(specs, str) else tuple(specs)
    if any(_matches(value, s) for s in specs):
        return
    want = " or ".join(_TYPE_WORDS[s] for s in specs)
    raise ConfigError(f"{key} must be {want}; got {_show(value)}")


def _show(value) -> str:
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _spec_from_default(name: str, default):
    """Type specs of a keyword argument from its default value."""
    if name in POLYMORPHIC:
        return POLYMORPHIC[name]
    if name == "dtype":
        return ("dtype",)
    if default is inspect.Parameter.empty or default is None:
        return ("number", "str", "bool", "list[number]", "list[str]")
    if isinstance(default, bool):
        return ("bool",)
    if isinstance(default, int):
        return ("int",)
    if isinstance(default, float):
        return ("number",)
    if isinstance(default, str):
        return ("str",)
    if isinstance(default, (list, tuple)):
        if all(_is_int(v) for v in default):
            return ("list[int]",)
        if all(_is_number(v) for v in default):
            return ("list[number]",)
        return ("list[str]",)
    if _is_dtype(default):
        return ("dtype",)
    return ("scalar",)


def _is_dtype(value) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, torch.dtype)


def _toml_default(default):
    """A TOML-representable form of a signature default (None when there is none)."""
    if default is inspect.Parameter.empty or default is None:
        return None
    if _is_dtype(default):
        return str(default).replace("torch.", "")
    if isinstance(default, tuple):
        return list(default)
    if isinstance(default, (bool, int, float, str, list)):
        return default
    return str(default)


def signature_schema(func, skip=("self",)) -> dict:
    """``{name: (specs, default, required)}`` of the keyword arguments of ``func``."""
    out = {}
    for name, p in inspect.signature(func).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is inspect.Parameter.empty
        out[name] = (_spec_from_default(name, p.default), _toml_default(p.default), required)
    return out


def _model_schema(cls) -> dict:
    return signature_schema(cls.__init__)


def _data_loaders() -> dict:
    from dendrite_sim.frontend import data
    loaders = getattr(data, "_LOADERS", None)
    if loaders is None:  # pragma: no cover - fall back to the naming convention
        loaders = {n[5:]: getattr(data, n) for n in dir(data)
                   if n.startswith("load_") and n != "load_dataset"}
    return dict(loaders)


def _data_schema(name: str) -> dict:
    loaders = _data_loaders()
    if not isinstance(name, str) or name not in loaders:
        raise ConfigError(f"data.name must be one of {sorted(loaders)}; got {_show(name)}")
    schema = signature_schema(loaders[name], skip=())
    for key, (spec, default) in DATA_EXTRA.items():
        schema[key] = ((spec,), default, False)
    return schema


def _schedule_schema(cls) -> dict:
    func = getattr(cls, "default_schedule", None)
    schema = {} if func is None else signature_schema(func)
    for key in schema:  # durations: numbers (None default means "model's choice")
        schema[key] = (("number",), schema[key][1], False)
    schema["phases"] = (("phases",), None, False)
    return schema


def learner_class_of(name):
    """The learner class registered as ``name`` (``ConfigError`` naming the choices)."""
    from dendrite_sim.learning.learners import learner_class, learner_names
    try:
        return learner_class(name)
    except ValueError:
        raise ConfigError(f"learner.name must be one of {learner_names()}; got "
                          f"{_show(name)}") from None


def learner_schema(cls) -> dict:
    """Schema of ``[learner]``: the keyword arguments of ``cls(model, ...)`` less the ones
    set from other sections (``INJECTED``)."""
    return signature_schema(cls.__init__, skip=("self", "model", *INJECTED))


# ----------------------------------------------------------------------------------------------
# sources and overrides
# ----------------------------------------------------------------------------------------------
def default_config_path(name: str):
    """The packaged default configuration of model ``name`` (a Traversable), or None."""
    res = importlib.resources.files("dendrite_sim.configs") / f"{name}.toml"
    return res if res.is_file() else None


def _read_toml_text(text: str, origin: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: invalid TOML: {err}") from None


def config_names() -> list[str]:
    """Names of the packaged configurations (``dendrite_sim/configs/<name>.toml``)."""
    root = importlib.resources.files("dendrite_sim.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def resolve_source(source: str) -> tuple[dict, str, Path | None]:
    """``(raw config, description, run directory or None)`` of a model name, a packaged
    configuration name (``fashion_two_phase``), a TOML file or a run directory (holding
    ``config.toml``)."""
    if not isinstance(source, str) or not source:
        raise ConfigError("give a model name or a path to a TOML configuration")
    path = Path(source)
    if path.is_dir():
        file = path / "config.toml"
        if not file.is_file():
            raise FileNotFoundError(f"{source}: directory has no config.toml (not a run "
                                    "directory)")
        return _read_toml_text(file.read_text(), str(file)), str(file), path
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {source}")
        return _read_toml_text(path.read_text(), source), source, None
    try:
        cls = model_class(source)
    except ConfigError as err:
        res = default_config_path(source) if re.fullmatch(r"\w+", source) else None
        if res is None:
            raise ConfigError(f"{err}; packaged configurations: {', '.join(config_names())}") \
                from None
        return _read_toml_text(res.read_text(), f"configs/{source}.toml"), \
            f"configs/{source}.toml", None
    name = canonical_name(cls)
    res = default_config_path(name)
    if res is None:
        return {"model": {"name": name}}, f"{name} (no default config file)", None
    raw = _read_toml_text(res.read_text(), f"configs/{name}.toml")
    raw.setdefault("model", {}).setdefault("name", name)
    return raw, f"configs/{name}.toml", None


def parse_override(item: str) -> tuple[str, str, object]:
    """``"section.key=value"`` -> ``(section, key, value)``; the value is read as a TOML
    literal (``3``, ``0.1``, ``true``, ``[64, 64, 10]``, ``"x"``), a bare word as a string."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set expects section.key=value; got {item!r}")
    key, _, text = item.partition("=")
    key = key.strip()
    if key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"--set key must be section.key (sections: {', '.join(SECTIONS)}); "
                          f"got {key!r}")
    section, name = key.split(".")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if not text or any(c in text for c in "[]{}\"'=,"):
            raise ConfigError(f"{key}: cannot read {text!r} as a TOML value (quote strings, "
                              "write lists as [1, 2])") from None
        value = text
    return section, name, value


def apply_overrides(raw: dict, overrides) -> dict:
    """A copy of ``raw`` with each ``section.key=value`` applied (validated later). Setting
    ``model.name`` or ``data.name`` to another value starts that section afresh (only the
    command line's keys for it are kept)."""
    out = copy.deepcopy(raw)
    parsed = []
    for item in overrides or ():
        section, name, value = parse_override(item)
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in --set {item!r}; sections "
                              f"are {', '.join(SECTIONS)}")
        parsed.append((section, name, value))
    # choosing another model, data set or learner replaces that section: the file's other
    # keys belong to the old one (its constructor or loader arguments)
    for section in ("model", "data", "learner"):
        names = [v for s, n, v in parsed if s == section and n == "name"]
        table = out.get(section)
        if names and isinstance(table, dict) and names[-1] != table.get("name", DEFAULT_LEARNER
                                                                        if section == "learner"
                                                                        else None):
            out[section] = {}
    given = {(s, n) for s, n, _ in parsed}
    for section, name, value in parsed:
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table; got {_show(table)}")
        table[name] = value
        _keep_in_step(out, section, name, value, given)
    return out


def _keep_in_step(cfg: dict, section: str, name: str, value, given) -> None:
    """An override of one of two keys that mean the same setting changes the other too
    (``training.mode`` and ``learner.mode``, ...); ``training.baseline`` and
    ``training.baselines`` overridden alone drop the other (resolved again)."""
    twin = {"training": "learner", "learner": "training"}.get(section)
    if name in SHARED_TRAINING and twin and (twin, name) not in given:
        other = cfg.get(twin)
        if isinstance(other, dict) and name in other:
            other[name] = value
    pair = {"baseline": "baselines", "baselines": "baseline"}
    if section == "training" and name in pair and ("training", pair[name]) not in given:
        cfg["training"].pop(pair[name], None)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_keys(section: str, table, schema: dict) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table; got {_show(table)}")
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"unknown config key {section}.{key}; known keys of [{section}]: "
                              f"{', '.join(sorted(schema))}")


def _validate_phases(phases) -> list:
    out = []
    for k, phase in enumerate(phases):
        where = f"schedule.phases[{k}]"
        for key, value in phase.items():
            if key not in PHASE_KEYS:
                raise ConfigError(f"unknown config key {where}.{key}; phase keys: "
                                  f"{', '.join(PHASE_KEYS)}")
            check_type(f"{where}.{key}", value, PHASE_KEYS[key])
        for key in ("name", "duration"):
            if key not in phase:
                raise ConfigError(f"{where}.{key} is required")
        out.append(dict(phase))
    return out



def _resolve(section: str, values: dict, schema: dict, owner: str) -> dict:
    """Type-check the keys of ``[section]`` given in ``values`` against ``schema`` (key ->
    ``(types, default, required)``); fill in defaults; a missing required key is an error."""
    resolved = {}
    for key, (specs, default, required) in schema.items():
        if key in values:
            check_type(f"{section}.{key}", values[key], specs)
            resolved[key] = values[key]
        elif required:
            raise ConfigError(f"{section}.{key} is required {owner}")
        elif default is not None:
            resolved[key] = default
    return resolved

def validate_config(raw: dict) -> dict:
    """Check ``raw`` against the schemas; return the resolved configuration with every
    default filled in (TOML-representable; unset optional keys are left out)."""
    if not isinstance(raw, dict):
        raise ConfigError("a configuration must be a TOML table")
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}]; sections are "
                              f"{', '.join(SECTIONS)}")
    out = {}
    # -- model
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"[model] must be a table; got {_show(model)}")
    if "name" not in model:
        raise ConfigError(f"model.name is required (one of {', '.join(model_names())})")
    cls = model_class(model["name"])
    schema = _model_schema(cls)
    _check_keys("model", model, {"name": None, **schema})
    out["model"] = {"name": canonical_name(cls),
                    **_resolve("model", model, schema, f"for {cls.__name__}")}
    # -- data
    data = dict(raw.get("data", {}))
    if not isinstance(data, dict):
        raise ConfigError(f"[data] must be a table; got {_show(data)}")
    dname = data.get("name", "digits")
    schema = _data_schema(dname)
    _check_keys("data", data, {"name": None, **schema})
    out["data"] = {"name": dname,
                   **_resolve("data", data, schema, f"for data set {dname!r}")}
    # -- schedule
    sched = dict(raw.get("schedule", {}))
    schema = _schedule_schema(cls)
    _check_keys("schedule", sched, schema)
    resolved = {}
    for key, value in sched.items():
        check_type(f"schedule.{key}", value, schema[key][0])
        resolved[key] = value
    if "phases" in resolved:
        others = [k for k in resolved if k != "phases"]
        if others:
            raise ConfigError(f"schedule.phases cannot be combined with schedule."
                              f"{others[0]} (give either phases or durations)")
        resolved["phases"] = _validate_phases(resolved["phases"])
    out["schedule"] = resolved
    out["learner"] = {}
    # -- fixed sections
    for section, schema in _FIXED.items():
        table = raw.get(section, {})
        _check_keys(section, table, schema)
        resolved = {}
        for key, (spec, default) in schema.items():
            if key in table:
                check_type(f"{section}.{key}", table[key], spec)
                resolved[key] = table[key]
            elif default is not None:
                resolved[key] = default
        out[section] = resolved
    out["learner"] = _resolve_learner(raw.get("learner", {}), raw.get("training", {}),
                                      out["training"])
    out["training"]["baselines"] = _resolve_baselines(out["training"])
    out["training"]["baseline"] = bool(out["training"]["baselines"])
    if "sweep" in raw:
        from dendrite_sim.frontend.sweep import validate_sweep
        out["sweep"] = validate_sweep(raw["sweep"])
    _check_values(out)
    return out


def _resolve_learner(table, raw_training: dict, training: dict) -> dict:
    """``[learner]`` resolved: name, the class's keyword arguments with defaults, and the
    keys shared with ``[training]`` made equal in both sections."""
    if not isinstance(table, dict):
        raise ConfigError(f"[learner] must be a table; got {_show(table)}")
    name = table.get("name", DEFAULT_LEARNER)
    cls = learner_class_of(name)
    for key in table:
        if key in INJECTED:
            raise ConfigError(f"learner.{key} is not a config key: it is set from the "
                              f"{INJECTED[key]} section")
    schema = learner_schema(cls)
    kwargs = {k: v for k, v in table.items() if k != "name"}
    _check_keys("learner", kwargs, schema)
    for key in SHARED_TRAINING:
        if key in kwargs and key in raw_training and kwargs[key] != raw_training[key]:
            raise ConfigError(f"learner.{key} = {_show(kwargs[key])} and training.{key} = "
                              f"{_show(raw_training[key])} disagree (they are one setting; "
                              "give one of them)")
        if key in schema and key not in kwargs:
            kwargs[key] = training[key]
    resolved = _resolve("learner", kwargs, schema, f"for learner {name!r}")
    for key in SHARED_TRAINING:
        if key in resolved:
            training[key] = resolved[key]
    return {"name": name, **resolved}


def _resolve_baselines(training: dict) -> list:
    """``training.baselines`` (learner names); ``training.baseline = false`` means none."""
    from dendrite_sim.learning.learners import learner_names
    if not training.get("baseline", True):
        return []
    names = list(training.get("baselines", DEFAULT_BASELINES))
    for name in names:
        if name not in learner_names():
            raise ConfigError(f"training.baselines: unknown learner {name!r}; learners: "
                              f"{', '.join(learner_names())}")
    if len(set(names)) != len(names):
        raise ConfigError(f"training.baselines lists a learner twice: {names}")
    return names


def _check_values(cfg: dict) -> None:
    """Value checks the CLI needs before any work (the library checks the rest)."""
    tr = cfg["training"]
    for key in ("epochs", "batch_size"):
        if tr[key] < 1:
            raise ConfigError(f"training.{key} must be >= 1; got {tr[key]}")
    if not 0.0 < tr["lr_decay"] <= 1.0:
        raise ConfigError(f"training.lr_decay must lie in (0, 1]; got {tr['lr_decay']}")
    from dendrite_sim.learning.presentation import MODES
    if tr["mode"] not in MODES:
        raise ConfigError(f"training.mode must be one of {list(MODES)}; got {tr['mode']!r}")
    build_integrator(cfg)
    build_equilibrium_solver(cfg)
    build_update_rule(cfg)
    from dendrite_sim.dynamics.teaching import LOSSES
    if tr["loss"] not in LOSSES:
        raise ConfigError(f"training.loss must be one of {list(LOSSES)}; got {tr['loss']!r}")
    for key in ("max_train", "max_test"):
        v = cfg["data"].get(key)
        if v is not None and v < 1:
            raise ConfigError(f"data.{key} must be >= 1; got {v}")
    sizes = cfg["model"].get("sizes")
    if sizes is not None and (len(sizes) < 2 or min(sizes) < 1):
        raise ConfigError(f"model.sizes must list at least two widths >= 1; got {sizes}")
    for key in ("dpi", "points", "examples"):
        if cfg["output"][key] < 1:
            raise ConfigError(f"output.{key} must be >= 1; got {cfg['output'][key]}")
    if cfg["output"]["example"] < 0:
        raise ConfigError(f"output.example must be >= 0; got {cfg['output']['example']}")


def load_config(source: str, overrides=()) -> dict:
    """Load a model's default configuration, a TOML file or a run directory's
    ``config.toml``; apply ``overrides`` (``section.key=value`` strings); validate."""
    raw, _, _ = resolve_source(source)
    return validate_config(apply_overrides(raw, overrides))


# ----------------------------------------------------------------------------------------------
# TOML output
# ----------------------------------------------------------------------------------------------
def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()
                                if v is not None) + " }"
    raise ConfigError(f"cannot write {value!r} as TOML")


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes, plus DEL, which TOML forbids raw and JSON
    leaves alone."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_string(k)


def dumps_toml(cfg: dict, header: str = "", unset: dict | None = None) -> str:
    """TOML text of a configuration (tables of scalars and lists; ``None`` left out). With
    ``unset`` (``{section: [key]}``, e.g. :func:`unset_keys`), each section ends with its
    keys that have no value, as comments saying what applies instead."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, table in cfg.items():
        if lines:
            lines.append("")
        lines.append(f"[{_key(section)}]")
        for key, value in table.items():
            if value is None:
                continue
            if key == "phases" and isinstance(value, list):
                lines.append(f"{key} = [")
                lines.extend(f"    {_toml_value(p)}," for p in value)
                lines.append("]")
            else:
                lines.append(f"{_key(key)} = {_toml_value(value)}")
        for key in (unset or {}).get(section, ()):
            means = UNSET_MEANS.get(f"{section}.{key}", "the model's own default")
            lines.append(f"# {key}: not set ({means})")
    return "\n".join(lines) + "\n"


#: what an unset optional key means (written as comments in a run's config.toml)
UNSET_MEANS = {
    "training.max_eval": "evaluate on every example",
    "training.diagnostics_every": "diagnostics at every evaluation",
    "training.probe_size": "probe batch of batch_size examples",
    "training.optimizer_lr": "Adam's default 1e-3; used by adam only",
    "training.momentum": "0.9; used by momentum and adam only",
    "training.beta2": "Adam's default 0.999; used by adam only",
    "solver.step_size": "adaptive steps; fixed-step methods need it",
    "solver.tol": "the dtype's default residual tolerance",
    "solver.rate_tol": "the equilibrium solver's default",
    "solver.dense_limit": "the equilibrium solver's default",
    "solver.max_seconds": "10 s per equilibrium solve",
    "solver.max_evals": "no limit on evaluations (the time budget applies)",
    "data.max_train": "every training example",
    "data.max_test": "every test example",
    "schedule.phases": "the model's default schedule with the durations above",
}


def unset_keys(cfg: dict) -> dict:
    """``{section: [key]}``: the known keys that the resolved configuration ``cfg`` leaves
    without a value (the code's default applies; TOML has no null)."""
    cls = model_class(cfg["model"]["name"])
    schemas = {"model": _model_schema(cls), "data": _data_schema(cfg["data"]["name"]),
               "schedule": {} if "phases" in cfg.get("schedule", {}) else _schedule_schema(cls),
               "learner": learner_schema(learner_class_of(cfg["learner"]["name"])),
               **_FIXED}
    skip = {"output": ("dir",), "data": ("name",), "learner": ("name",)}
    return {section: [k for k in schema if k not in cfg.get(section, {})
                      and k not in skip.get(section, ())]
            for section, schema in schemas.items()}


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------
def _model_kwargs(cfg: dict) -> dict:
    import torch
    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    if "dtype" in kwargs:
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
    return kwargs


def build_model(cfg: dict, data=None):
    """Instantiate the configured model. With ``data`` (a Dataset), ``model.sizes`` is first
    checked against its input and output widths."""
    cls = model_class(cfg["model"]["name"])
    sizes = cfg["model"].get("sizes")
    if data is not None and sizes is not None:
        if sizes[0] != data.n_features:
            raise ConfigError(f"model.sizes starts with {sizes[0]} inputs but data set "
                              f"{data.name!r} has {data.n_features} features")
        if sizes[-1] != data.n_outputs:
            raise ConfigError(f"model.sizes ends with {sizes[-1]} outputs but data set "
                              f"{data.name!r} has {data.n_outputs} outputs")
    kwargs = _model_kwargs(cfg)
    device = kwargs.get("device")
    if device is not None:
        import torch
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"model.device: {err}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"model.device is {device!r} but this torch has no usable CUDA "
                              f"(torch {torch.__version__}; install a CUDA build of torch)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model ({cls.__name__}): {err}") from None


def build_schedule(cfg: dict, model):
    """The configured schedule: explicit phases, or ``model.default_schedule(**durations)``."""
    from dendrite_sim.learning.schedule import Phase, Schedule
    sched = cfg.get("schedule", {})
    try:
        if "phases" in sched:
            return Schedule([Phase(**{k: (tuple(v) if k == "plastic" else v)
                                      for k, v in p.items()}) for p in sched["phases"]])
        return model.default_schedule(**sched)
    except ValueError as err:
        raise ConfigError(f"schedule: {err}") from None


def build_data(cfg: dict):
    """Load the configured data set (``max_train``/``max_test`` keep the first examples)."""
    from dendrite_sim.frontend.data import Dataset, load_dataset
    spec = dict(cfg["data"])
    name = spec.pop("name")
    max_train, max_test = spec.pop("max_train", None), spec.pop("max_test", None)
    try:
        data = load_dataset(name, **spec)
    except TypeError as err:
        raise ConfigError(f"data ({name}): {err}") from None
    if max_train is None and max_test is None:
        return data
    n_tr = len(data.x_train) if max_train is None else min(max_train, len(data.x_train))
    n_te = len(data.x_test) if max_test is None else min(max_test, len(data.x_test))
    return Dataset(data.x_train[:n_tr], data.y_train[:n_tr], data.x_test[:n_te],
                   data.y_test[:n_te], data.n_classes, data.task, data.name,
                   data.description + f" Truncated to the first {n_tr} train / {n_te} test "
                   "examples.", data.extras)


INTEGRATOR_KEYS = ("method", "rtol", "atol", "step_size", "max_abs")


def build_integrator(cfg: dict):
    """The :class:`~dendrite_sim.dynamics.integrators.Integrator` of the ``[solver]`` section,
    built (and validated) once; a bad value is a ``ConfigError`` naming ``solver.<key>``."""
    from dendrite_sim.dynamics.integrators import Integrator
    s = cfg["solver"]
    try:
        return Integrator(**{k: s[k] for k in INTEGRATOR_KEYS if s.get(k) is not None})
    except (TypeError, ValueError) as err:
        message = str(err)
        key = next((k for k in INTEGRATOR_KEYS if message.startswith(k)), None)
        raise ConfigError(f"solver.{message}" if key else f"[solver]: {message}") from None


#: ``[training]`` keys of the update rule -> its keyword arguments
OPTIMIZER_KEYS = {"optimizer_lr": "lr", "momentum": "momentum", "beta2": "beta2"}


def build_update_rule(cfg: dict):
    """The :class:`~dendrite_sim.learning.optimizers.UpdateRule` of ``training.optimizer``
    with its settings, validated; a bad value is a ``ConfigError`` naming the key."""
    from dendrite_sim.learning.optimizers import make_update_rule
    tr = cfg["training"]
    given = {key: tr[key] for key in OPTIMIZER_KEYS if tr.get(key) is not None}
    try:
        return make_update_rule(tr["optimizer"], **{OPTIMIZER_KEYS[k]: v for k, v in given.items()})
    except ValueError as err:
        message = str(err)
        for key, arg in OPTIMIZER_KEYS.items():
            if message.startswith(f"{arg} "):
                raise ConfigError(f"training.{key}{message[len(arg):]}") from None
        if message.startswith(f"optimizer {tr['optimizer']!r} takes"):
            raise ConfigError(f"training.optimizer = {tr['optimizer']!r} takes none of "
                              f"{sorted(given)} of [training] (its settings: "
                              f"{message.split('settings ')[1].split(';')[0]})") from None
        raise ConfigError(f"training.{message}") from None


EQUILIBRIUM_KEYS = {"equilibrium": "method", "tol": "tol", "rate_tol": "rate_tol",
                    "max_iter": "max_iter", "dense_limit": "dense_limit",
                    "max_seconds": "max_seconds", "max_evals": "max_evals"}


def build_equilibrium_solver(cfg: dict):
    """The :class:`~dendrite_sim.dynamics.equilibrium.EquilibriumSolver` of the ``[solver]``
    section (``equilibrium`` is its method), validated once; a bad value is a
    ``ConfigError`` naming ``solver.<key>``."""
    from dendrite_sim.dynamics.equilibrium import EquilibriumSolver
    s = cfg["solver"]
    fields = {field: s[key] for key, field in EQUILIBRIUM_KEYS.items() if s.get(key) is not None}
    try:
        return EquilibriumSolver(**fields)
    except (TypeError, ValueError) as err:
        message = str(err)
        key = next((k for k, f in EQUILIBRIUM_KEYS.items() if message.startswith(f)), None)
        raise ConfigError(f"solver.{key}{message[len(EQUILIBRIUM_KEYS[key]):]}" if key
                          else f"[solver]: {message}") from None


def learner_options(cfg: dict) -> tuple[dict, dict]:
    """``(present_kwargs, fixed_point_kwargs)`` from the ``[solver]`` section: coupled mode
    gets its :func:`build_integrator`, quasi-static mode the equilibrium settings."""
    s = cfg["solver"]
    if cfg["training"]["mode"] == "coupled":
        present = {"integrator": build_integrator(cfg)}
    else:
        present = {k: s[k] for k in ("tol", "rate_tol", "max_iter", "max_seconds", "max_evals")
                   if s.get(k) is not None}
    fixed = {k: s[k] for k in ("tol", "max_iter", "dense_limit", "max_seconds", "max_evals")
             if s.get(k) is not None}
    if s.get("equilibrium"):
        fixed["method"] = s["equilibrium"]
    return present, fixed


def build_learner(cfg: dict, model, schedule, name: str | None = None):
    """The configured learner on ``model`` (``name`` None), or the baseline learner ``name``.

    The configured learner gets the keyword arguments of ``[learner]``; a baseline gets the
    ``[training]`` settings its signature takes (``mode``, ``loss``, ``eta_hat``, and ``lr`` =
    ``training.backprop_lr``). Either gets ``schedule`` and the ``[solver]`` settings
    (``present_kwargs``, ``fixed_point_kwargs``) when its signature takes them.
    """
    cls = learner_class_of(cfg["learner"]["name"] if name is None else name)
    accepted = inspect.signature(cls.__init__).parameters
    if name is None:
        kwargs = {k: v for k, v in cfg["learner"].items() if k != "name"}
    else:
        tr = cfg["training"]
        kwargs = {k: tr[k] for k in SHARED_TRAINING if k in accepted}
        if "lr" in accepted:
            kwargs["lr"] = tr["backprop_lr"]
    present, fixed = learner_options(cfg)
    injected = {"schedule": schedule, "present_kwargs": present, "fixed_point_kwargs": fixed}
    kwargs.update({k: v for k, v in injected.items() if k in accepted})
    return cls(model, **kwargs)
