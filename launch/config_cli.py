"""Shared command-line plumbing: ``--config=configs/x.py --config.a.b=value`` with clear errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

from avat3r_jax.config_validation import ConfigValueError, validate_config

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file; override fields with --config.a.b=value.", lock_config=True
)


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses the flags, then validates the whole config (before any work), each failure in one line."""
    try:
        remaining = flags.FLAGS(argv)
        if CONFIG.value is not None:
            validate_config(CONFIG.value)
        return remaining
    except ConfigValueError as error:
        sys.exit(f"error: {error}")
    except flags.Error as error:
        sys.exit(f"error: {error}\nRun with --help for the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # ml_collections raises these for unknown or ill-typed --config.* overrides.
        message = " ".join(str(error).replace("\\n", "\n").replace("\\'", "").replace("'", "").split())
        overrides = [arg for arg in argv if arg.startswith("--config.")]
        sys.exit(f"error: bad config override ({message}) among {overrides}")


def run_app(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` with config-override errors reported as one line and exit code 1."""
    app.run(main, flags_parser=_parse_flags)
