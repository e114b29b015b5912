"""The ``modelpilot`` command: one entry point, subcommands imported lazily.

Top of the operator side. ``modelpilot serve`` hands over to the serving
package (the only place the two packages meet, so a serving pod never imports
the operator); ``modelpilot dev …`` and ``modelpilot demo`` hand over to the
local environment, ``modelpilot_dev`` (``modelpilot-dev``): its own
distribution in devenv/, not part of the product and never in an image, found
by name through importlib only when those subcommands run; the resource verbs
(``promote|abort|pause|resume|undo|status``) live in ``modelpilot.kubectl``.
"""

from __future__ import annotations

import argparse
import importlib
import sys


#: The local environment's package: its own distribution (devenv/ in the source repository), never
#: in an image and never imported by the product (import-linter); reached by name only, when used.
DEV_PACKAGE = "modelpilot_dev"


def _dev(argv: list[str], prog: str) -> int:
    """``modelpilot dev …`` / ``modelpilot demo …``: hand the arguments to ``modelpilot-dev``.

    Imported by name through importlib at this point only, so nothing of the product imports
    the local environment; where it is not installed (an image, a plain product install) the
    command says so instead of failing with a traceback.
    """
    try:
        dev_cli = importlib.import_module(f"{DEV_PACKAGE}.cli")
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == DEV_PACKAGE or exc.name.startswith(DEV_PACKAGE + ".")):
            raise
        print(f"error: `{prog}` needs the local environment, which is not part of the modelpilot product "
              "(not installed here, never in an image). In a checkout of the source repository run "
              "scripts/bootstrap.sh, or: pip install -e ./devenv", file=sys.stderr)
        return 2
    return int(dev_cli.main(argv, prog=prog) or 0)


def _serve(argv: list[str]) -> int:
    from modelpilot_serve.cli import main as serve_main

    return int(serve_main(argv) or 0)


def kubectl_plugin() -> int:
    """`kubectl modelpilot promote NAME`: only the resource verbs (see ``modelpilot.kubectl``)."""
    from modelpilot.kubectl import plugin_main

    return plugin_main(sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # the serving package parses its own flags
        return _serve(argv[1:])
    if argv and argv[0] == "operator":
        from modelpilot.operator.run import main as operator_main

        return operator_main(argv[1:])
    if argv and argv[0] == "dev":  # the local environment parses its own flags (modelpilot-dev)
        return _dev(argv[1:], prog="modelpilot dev")
    if argv and argv[0] == "demo":
        return _dev(["demo", *argv[1:]], prog="modelpilot")
    parser = argparse.ArgumentParser(prog="modelpilot", description="Serve MLflow models on Kubernetes, safely.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the model server (see `modelpilot serve --help`)")
    sub.add_parser("operator", help="run the operator (see `modelpilot operator --help`)")

    sub.add_parser("dev", help="the local environment: a real control plane, kwok nodes, MLflow, Prometheus "
                               "(see `modelpilot dev --help`; a development tool, not in the images)")
    sub.add_parser("demo", help="the Quick start: environment up, register a model, serve it, predict "
                                "(see `modelpilot demo --help`; needs the local environment)")

    from modelpilot import kubectl

    kubectl.add_verbs(sub)

    args = parser.parse_args(argv)
    if args.command in kubectl.VERBS:
        return kubectl.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
