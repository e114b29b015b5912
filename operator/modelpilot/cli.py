"""The ``modelpilot`` command: one entry point, subcommands imported lazily.

Top of the operator side. ``modelpilot serve`` hands over to the serving
package (the only place the two packages meet, so a serving pod never imports
the operator); ``modelpilot dev …`` drives the local environment;
``modelpilot demo`` runs the Quick start story on it; the resource verbs
(``promote|abort|pause|resume|undo|status``) live in ``modelpilot.kubectl``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _dev(args: argparse.Namespace) -> int:
    from modelpilot.dev import binaries
    from modelpilot.dev.environment import DevError, Environment

    env = Environment(Path(args.home) if args.home else None)
    try:
        if args.dev_command == "build":
            found = binaries.resolve(build=True)
            for name, path in found.as_dict().items():
                print(f"{name:24} {path}")
            print(f"{'gateway-api CRDs':24} {binaries.gateway_api_crds()}")
            if args.node == "real":
                from modelpilot.dev import images

                for name, path in binaries.resolve_node(build=True).items():
                    print(f"{name:24} {path}")
                coredns = binaries.resolve_coredns(build=True)
                print(f"{'coredns':24} {coredns}")
                try:
                    for image in images.ensure_all(operator=True, coredns=coredns):
                        print(f"{image.name:24} {image.image_id[:12]} {image.archive}")
                except images.ImageError as exc:
                    raise DevError(str(exc)) from None
        elif args.dev_command == "up":
            state = env.up(build=not args.no_build, node=args.node)
            _print_summary(env, state)
        elif args.dev_command == "env":
            for key, value in env.exports().items():
                print(f"export {key}='{value}'")
        elif args.dev_command == "status":
            rows = env.status()
            if not rows:
                print(f"no environment at {env.home}; run `modelpilot dev up`")
                return 1
            for row in rows:
                mark = "ok " if row["healthy"] else "BAD"
                print(f"{mark} {row['name']:24} pid {row['pid']!s:8} {row['detail']:14} {row['url']}")
            return 0 if all(r["healthy"] for r in rows) else 1
        elif args.dev_command == "down":
            env.down()
    except (DevError, binaries.BinaryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_summary(env: object, state: dict) -> None:  # type: ignore[type-arg]
    exports = state["exports"]
    print(f"modelpilot local environment at {state['home']}")
    print(f"  kube-apiserver  {state['ports']['apiserver'] and 'https://127.0.0.1:%d' % state['ports']['apiserver']}")
    print(f"  MLflow          {exports['MLFLOW_TRACKING_URI']}")
    print(f"  Prometheus      {exports['PROMETHEUS_URL']}")
    print(f"  kubeconfig      {exports['KUBECONFIG']}")
    if state.get("node"):
        node = state["node"]
        print(f"  real node       {node['name']} (node IP {node['node_ip']}, netns {node['netns']}, "
              f"pods {node['pod_cidr']}; control plane for pods at {node['host_ip']})")
    if "startup_seconds" in state:
        print(f"  started in      {state['startup_seconds']}s")
    print(f'use it with:      eval "$(modelpilot dev env)"   (or: source {Path(state["home"]) / "env.sh"})')


def _serve(argv: list[str]) -> int:
    from modelpilot_serve.cli import main as serve_main

    return int(serve_main(argv) or 0)


def _demo(args: argparse.Namespace) -> int:
    from modelpilot.dev.demo import run

    return run(home=Path(args.home) if args.home else None, keep=not args.down)


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
    parser = argparse.ArgumentParser(prog="modelpilot", description="Serve MLflow models on Kubernetes, safely.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the model server (see `modelpilot serve --help`)")
    sub.add_parser("operator", help="run the operator (see `modelpilot operator --help`)")

    dev = sub.add_parser("dev", help="the local environment: a real control plane, kwok nodes, MLflow, Prometheus")
    dev.add_argument("--home", help="state directory (default $MODELPILOT_DEV_HOME or ~/.local/state/modelpilot/dev)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start everything in the background (idempotent)")
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    node_default = os.environ.get("MODELPILOT_DEV_NODE", "process")
    up.add_argument("--node", choices=("process", "real"), default=node_default,
                    help="'real' adds a real node (containerd, kubelet, kube-proxy in a network namespace; images "
                         "built here from the Dockerfiles) beside the simulated ones; default "
                         f"$MODELPILOT_DEV_NODE or 'process' (now: {node_default})")
    dev_sub.add_parser("status", help="health of each component")
    dev_sub.add_parser("down", help="stop every process the environment started and delete its state")
    dev_sub.add_parser("env", help='print export lines: eval "$(modelpilot dev env)"')
    build = dev_sub.add_parser("build", help="build (or find) the control-plane binaries")
    build.add_argument("--node", choices=("process", "real"), default="process",
                       help="'real' also builds kubelet, kube-proxy and the container images")

    from modelpilot import kubectl

    kubectl.add_verbs(sub)

    demo = sub.add_parser("demo", help="the Quick start: environment up, register a model, serve it, predict")
    demo.add_argument("--home", help="state directory of the environment")
    demo.add_argument("--down", action="store_true", help="stop the environment at the end")

    args = parser.parse_args(argv)
    if args.command == "dev":
        return _dev(args)
    if args.command == "demo":
        return _demo(args)
    if args.command in kubectl.VERBS:
        return kubectl.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
