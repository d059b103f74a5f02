"""``${VAR}`` and ``${VAR:-default}`` in config values, resolved from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from src.common.errors import ConfigError

# A reference, or a bare "${" that starts none (group 1 unset): "${VAR", "${}", "${BAD-NAME}".
_REF = re.compile(r"\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\})?")


def interpolate(value: str, *, where: str, env: Mapping[str, str] | None = None) -> str:
    """Replace every reference in ``value``. An unset variable without a default is an error naming
    ``where`` (file and key) and the variable; so is a ``${`` that starts no reference (it would
    otherwise pass on as literal text, e.g. as a password). ``$${`` escapes a literal ``${``."""
    environ = os.environ if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name is None:  # the value is not shown: it may be a secret
            raise ConfigError(
                f"{where}: '${{' starts no environment reference; write ${{VAR}} or ${{VAR:-default}} "
                "(VAR: letters, digits and _), or $${ for a literal ${",
                key=where,
            )
        if default is not None and "${" in default:  # "${A:-${B}}" read as A, or "${B" then "}"
            raise ConfigError(
                f"{where}: the default of ${{{name}:-...}} holds a '${{': a reference cannot nest in "
                "another (its value came out wrong, with a stray '}'); set the variable, or write $${ for a "
                "literal ${",
                key=where,
            )
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set; export it or write ${{{name}:-default}}",
            key=where,
        )

    escaped = value.replace("$${", "\x00")
    return _REF.sub(sub, escaped).replace("\x00", "${")
