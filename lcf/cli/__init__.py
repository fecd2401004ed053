"""The ``lcf`` command line: the parser (:mod:`lcf.cli.app`), the evaluation and cross-context
commands (:mod:`lcf.cli.commands`), the demo (:mod:`lcf.cli.demo`) and ``lcf inspect``
(:mod:`lcf.cli.inspect`). Importing this package loads neither torch nor the training stack."""
from lcf.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
