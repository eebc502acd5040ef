"""The ``serve --config FILE`` file: TOML (``.toml``) or YAML (``.yaml``/``.yml``).

Tables (all optional, nothing else allowed)::

    [callback]          # PtychoCallback keywords: backend, refine_iterations, energy_kev, ...
    [kafka.consumer]    # librdkafka consumer settings (security.protocol, sasl.*, ...)
    [kafka.producer]    # librdkafka producer settings for the derived topic

Start documents still win per run (``RE(plan, ptycho={...})``), as in the profile.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTIONS = ("callback", "kafka")
KAFKA_SECTIONS = ("consumer", "producer")


@dataclass(frozen=True)
class ServeConfig:
    """The config file's content (see module docstring)."""

    callback: dict[str, Any] = field(default_factory=dict)
    kafka_consumer: dict[str, Any] = field(default_factory=dict)
    kafka_producer: dict[str, Any] = field(default_factory=dict)


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        with path.open("rb") as stream:
            return _parsed(path, tomllib.load, stream)
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from error
        with path.open() as stream:
            data = _parsed(path, yaml.safe_load, stream)
        return {} if data is None else data
    raise ValueError(f"{path}: expected a .toml, .yaml or .yml file")


def _parsed(path: Path, load: Any, stream: Any) -> Any:
    try:
        return load(stream)
    except Exception as error:  # tomllib / yaml syntax errors
        raise ValueError(f"{path}: {type(error).__name__}: {error}") from error


def _table(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a config file; ValueError naming the file and key on bad content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = _read(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected tables at the top level")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {unknown}; allowed: {list(SECTIONS)}")
    kafka = _table(data, "kafka", str(path))
    unknown = sorted(set(kafka) - set(KAFKA_SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown [kafka] table(s) {unknown}; allowed: consumer, producer")
    return ServeConfig(
        callback=_table(data, "callback", str(path)),
        kafka_consumer=_table(kafka, "consumer", f"{path} [kafka]"),
        kafka_producer=_table(kafka, "producer", f"{path} [kafka]"),
    )
