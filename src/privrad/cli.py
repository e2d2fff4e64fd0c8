"""The ``privrad`` command.

Each area owns its subcommands and registers them here through a ``register_cli(subparsers)``
function: ``privrad data …`` (:mod:`privrad.data.cli`), ``privrad run …`` (:mod:`privrad.pipeline`),
``privrad study …`` (:mod:`privrad.study`), ``privrad book …`` (:mod:`privrad.book`) and
``privrad audit …`` (:mod:`privrad.audit`).

A :class:`privrad.errors.PrivradError` is printed as one line, ``privrad: error: <sentence>``,
with exit status 2; nothing else is printed for it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from privrad import __version__
from privrad.errors import PrivradError

COMMAND_MODULES = ("privrad.data.cli", "privrad.pipeline", "privrad.study", "privrad.book", "privrad.audit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privrad",
        description="Differentially private LoRA fine-tuning on radiology reports.",
    )
    parser.add_argument("--version", action="version", version=f"privrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrivradError as exc:
        print(f"privrad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("privrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
