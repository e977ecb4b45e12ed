"""Parsing raw parameter values: each parser takes the parameter's name and the raw value (a string
from click, ``mlflow run -P`` or a run's logged params) and returns a typed value, or raises
``ConfigError`` with the one line the user sees. A ``Kind`` pairs a parser with its ``--help``
spelling and MLproject type; the rows of ``pipelines.params`` use kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

AUTO = "auto"  # "use the model's recipe" (numbers) or "pick for this machine" (device/precision)
MAX_VAL_FRACTION = 0.5


class ConfigError(ValueError):
    """A bad parameter: the message is the one line the user sees."""


# Parsers: each takes the parameter's name and the raw value, returns a typed value.


def _is_auto(raw) -> bool:
    return raw is None or str(raw).strip().lower() in ("", AUTO, "recipe", "none")


def parse_int(name: str, raw, minimum: int = 1, allow_auto: bool = False) -> int | None:
    if allow_auto and _is_auto(raw):
        return None
    try:
        value = float(str(raw).strip())
        if value != int(value):
            raise ValueError
        value = int(value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return value


def parse_float(name: str, raw, positive: bool = True, allow_auto: bool = False) -> float | None:
    if allow_auto and _is_auto(raw):
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {raw!r}")
    if not positive and value < 0:
        raise ConfigError(f"{name} must be >= 0, got {raw!r}")
    return value


def parse_choice(name: str, raw, choices, allow_auto: bool = False) -> str | None:
    # a choice is never auto: lr_schedule none means no schedule, not the recipe's
    if allow_auto and _is_auto(raw) and str(raw).strip() not in choices:
        return None
    value = str(raw).strip()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return value


def parse_bool(name: str, raw, allow_auto: bool = False) -> bool | None:
    if allow_auto and _is_auto(raw):
        return None
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_classes(raw, dataset: str) -> list[int]:
    from pipelines.data import num_labels

    if _is_auto(raw) or str(raw).strip().lower() == "default":
        return []
    parts = [p for p in str(raw).replace(" ", "").split(",") if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"classes must be comma-separated integers, got {raw!r}") from None
    n = num_labels(dataset)
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise ConfigError(f"classes must be ids in 0..{n - 1} for {dataset}; got {bad}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"classes must not repeat an id; got {raw!r}")
    if len(ids) < 2:
        raise ConfigError(f"classes needs at least 2 ids, got {raw!r}")
    return ids


def parse_device(raw) -> str:
    value = str(raw or AUTO).strip().lower()
    if value in (AUTO, "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {raw!r}")


def parse_val_fraction(raw, allow_zero: bool = True) -> float:
    """A share of the training set in [0, 0.5] (``(0, 0.5]`` without ``allow_zero``); missing = 0.

    Missing covers runs logged before the parameter existed: they resume with no holdout.
    """
    value = 0.0
    if raw is not None and str(raw).strip() != "":
        try:
            value = float(str(raw).strip()) + 0.0  # + 0.0: -0.0 becomes 0.0
        except ValueError:
            value = float("nan")
    if not (0 <= value <= MAX_VAL_FRACTION) or (value == 0 and not allow_zero):
        bounds = f"{'[' if allow_zero else '('}0, {MAX_VAL_FRACTION:g}]"
        raise ConfigError(f"val_fraction must be a number in {bounds}, got {raw!r}")
    return value


def parse_size(raw) -> tuple[int, int]:
    """A canvas size: ``N`` or ``HxW``, each at least 16 pixels."""
    text = str(raw).strip().lower().replace(" ", "")
    parts = text.split("x") if "x" in text else [text, text]
    try:
        h, w = (parse_int("size", p, minimum=16) for p in parts)
    except ConfigError:
        raise ConfigError(f"size must be N or HxW with N, H, W >= 16 (e.g. 48 or 45x47), got {raw!r}") from None
    return h, w


def parse_path(raw) -> str | None:
    """A folder or ``None``; a value read back from a run's params is shell-quoted (empty = ``''``)."""
    value = str(raw or "").strip().strip("'\"")
    return value if value.lower() not in ("", "none") else None


def parse_text(raw) -> str:
    return "" if raw is None else str(raw)


def parse_int_list(name: str, raw, minimum: int = 0, allow_auto: bool = False) -> list[int] | None:
    """Comma-separated integers (``0,1,2``), at least one, none repeated."""
    if allow_auto and _is_auto(raw):
        return None
    parts = [p for p in str(raw).replace(" ", "").split(",") if p]
    try:
        values = [parse_int(name, p, minimum) for p in parts]
    except ConfigError:
        values = []
    if not values:
        raise ConfigError(f"{name} must be comma-separated integers >= {minimum}; got {raw!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} must not repeat a value; got {raw!r}")
    return values


def parse_log_range(name: str, raw, allow_zero: bool = False) -> tuple[float, float]:
    """``low,high`` (sampled log-uniformly) or one value (``low == high``); 0 alone with ``allow_zero``."""
    parts = [p for p in str(raw).replace(" ", "").split(",") if p]
    if len(parts) not in (1, 2):
        raise ConfigError(f"{name} must be 'low,high' (log-uniform) or one value; got {raw!r}")
    lo, hi = (parse_float(name, p, positive=not allow_zero) for p in (parts[0], parts[-1]))
    if lo > hi:
        raise ConfigError(f"{name} must be 'low,high' with low <= high; got {raw!r}")
    if lo == 0 and hi > 0:
        raise ConfigError(f"{name}: a log-uniform range cannot start at 0; use e.g. 1e-6,{hi:g} or just 0")
    return lo, hi


# Kinds: a parser with its --help spelling and MLproject type.


@dataclass(frozen=True)
class Kind:
    """How a row's value is parsed (``parse(name, raw)``), shown (``metavar``) and declared to MLflow."""

    parse: Callable[[str, object], object]
    metavar: str
    extra: str = ""  # the allowed range, shown after the help text
    mlproject_type: str = "string"
    check_early: bool = True  # False: the value is checked with others (classes needs the data set)


def INT(minimum: int = 1, auto: bool = False) -> Kind:
    return Kind(
        lambda n, v: parse_int(n, v, minimum, allow_auto=auto),
        "auto|INTEGER" if auto else "INTEGER RANGE",
        f"x>={minimum}",
        "string" if auto else "int",
    )


def FLOAT(positive: bool = True, auto: bool = False) -> Kind:
    return Kind(
        lambda n, v: parse_float(n, v, positive, allow_auto=auto),
        "auto|FLOAT" if auto else "FLOAT RANGE",
        "x>0" if positive else "x>=0",
        "string" if auto else "float",
    )


def CHOICE(choices: Iterable[str], auto: bool = False) -> Kind:
    choices = tuple(choices)
    shown = (AUTO, *choices) if auto and AUTO not in choices else choices
    return Kind(lambda n, v: parse_choice(n, v, choices, allow_auto=auto), f"[{'|'.join(shown)}]")


def INT_LIST(minimum: int = 0, auto: bool = False) -> Kind:
    return Kind(lambda n, v: parse_int_list(n, v, minimum, allow_auto=auto), "auto|INTEGERS" if auto else "INTEGERS")


def LOG_RANGE(allow_zero: bool = False) -> Kind:
    return Kind(lambda n, v: parse_log_range(n, v, allow_zero), "LOW,HIGH|VALUE", "x>=0" if allow_zero else "x>0")


def BOOL(auto: bool = False) -> Kind:
    return Kind(lambda n, v: parse_bool(n, v, allow_auto=auto), "[auto|true|false]" if auto else "[true|false]")


TEXT = Kind(lambda n, v: parse_text(v), "TEXT")
PATH = Kind(lambda n, v: parse_path(v), "PATH")
DEVICE = Kind(lambda n, v: parse_device(v), "[auto|cpu|cuda|cuda:N]")
VAL_FRACTION = Kind(lambda n, v: parse_val_fraction(v), "FLOAT RANGE", "0<=x<=0.5", "float")
HOLDOUT = Kind(lambda n, v: parse_val_fraction(v, allow_zero=False), "FLOAT RANGE", "0<x<=0.5", "float")
SIZE = Kind(lambda n, v: parse_size(v), "N|HxW")
CLASSES = Kind(lambda n, v: parse_text(v), "default|IDS", check_early=False)  # ids depend on the data set
# "none" (or empty) = no value; the landscape treats a cap of 0 as none too
OPTIONAL_INT = Kind(
    lambda n, v: None if str(v).strip().lower() in ("", "none", "0") else parse_int(n, v, 3), "none|INTEGER", "x>=3"
)
MINUTES = Kind(lambda n, v: None if str(v).strip().lower() == "none" else parse_float(n, v), "none|FLOAT", "x>0")
MODEL = Kind(lambda n, v: parse_text(v).strip(), "MODEL", check_early=False)  # checked against the registry
