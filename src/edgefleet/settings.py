"""Layered settings: command-line flags win over ``EDGEFLEET_*`` environment variables,
which win over the TOML file, which wins over the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource

from edgefleet.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)

__all__ = ["load_settings"]


def load_settings(cls: type[S], config_file: Path | None, flags: dict[str, Any]) -> S:
    """Build ``cls`` from flags (None means "not given"), the environment and ``config_file``.

    Raises:
        ConfigError: the file is missing or unreadable, or a value is invalid.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")

    class Layered(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls_,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    Layered.__name__ = cls.__name__
    try:
        return Layered(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {cls.__name__}: {problems}") from exc
    except (OSError, ValueError) as exc:  # unreadable or malformed TOML
        raise ConfigError(f"cannot read {config_file}: {exc}") from exc
