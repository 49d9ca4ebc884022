"""Shared command-line plumbing: ``--config=configs/x.py --config.a.b=value`` with clear errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/*.py file; override fields with --config.a.b=value.", lock_config=True
)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
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
