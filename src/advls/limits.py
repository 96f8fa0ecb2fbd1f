"""The bounds on input from anyone: how much of a spec is read, built and expanded.

Each is checked before the work it guards, so a hostile or mistaken input ends at once with
a clear error instead of exhausting memory or time. They live here, apart from the modules
that enforce them, so that the command line can show them without importing those.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["DEFAULT_MAX_RUNS", "LIMITS", "MAX_SPEC_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_VALUES"]

#: The most bytes of a spec file read (the shipped specs are under 2 KB).
MAX_SPEC_BYTES = 1 << 20
#: The most values (scalars, lists, mappings) a spec may hold once its aliases are expanded.
MAX_YAML_VALUES = 100_000
#: The deepest nesting of lists and mappings in a spec (the shipped specs nest 4 deep).
MAX_YAML_DEPTH = 32
#: The most runs a spec may expand to unless the caller allows more (``--max-runs``); about
#: a second of validation, and far more than any shipped suite (28 runs at most).
DEFAULT_MAX_RUNS = 1000

#: The limits by name, for documentation.
LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "spec bytes": MAX_SPEC_BYTES,
        "YAML values after aliases": MAX_YAML_VALUES,
        "YAML nesting depth": MAX_YAML_DEPTH,
        "runs without --max-runs": DEFAULT_MAX_RUNS,
    }
)
