"""``modelpilot-dev``: the local environment's command (also reached as ``modelpilot dev …`` and ``modelpilot demo``).

``modelpilot-dev up|status|env|down|build`` drive the environment (``modelpilot dev up`` is the
same command: the product's CLI hands its arguments over through importlib, without importing
this package anywhere else); ``modelpilot-dev demo`` is the Quick start story (``modelpilot demo``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from modelpilot_dev.environment import Environment


def _dev(args: argparse.Namespace) -> int:
    from modelpilot_dev import binaries
    from modelpilot_dev.environment import DevError, Environment

    env = Environment(Path(args.home) if args.home else None)
    try:
        if args.dev_command == "build":
            found = binaries.resolve(build=True)
            for name, path in found.as_dict().items():
                print(f"{name:24} {path}")
            print(f"{'gateway-api CRDs':24} {binaries.gateway_api_crds()}")
            if args.node == "real":
                from modelpilot_dev import images

                for name, node_binary in binaries.resolve_node(build=True).items():
                    print(f"{name:24} {node_binary}")
                coredns = binaries.resolve_coredns(build=True)
                print(f"{'coredns':24} {coredns}")
                ngf = binaries.resolve_ngf(build=True)
                print(f"{'nginx-gateway':24} {ngf}")
                print(f"{'nginx-gateway CRDs':24} {binaries.ngf_crds()}")
                try:
                    for image in images.ensure_all(operator=True, coredns=coredns, ngf=ngf):
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
                print(f"no environment at {env.home}; run `{env.command('up')}`")
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


def _print_summary(env: Environment, state: dict) -> None:  # type: ignore[type-arg]
    exports = state["exports"]
    print(f"modelpilot local environment at {state['home']}")
    print(f"  kube-apiserver  {state['ports']['apiserver'] and 'https://127.0.0.1:%d' % state['ports']['apiserver']}")
    print(f"  MLflow          {exports['MLFLOW_TRACKING_URI']}")
    print(f"  Prometheus      {exports['PROMETHEUS_URL']}")
    print(f"  kubeconfig      {exports['KUBECONFIG']}")
    if state.get("node"):
        node = state["node"]
        if node.get("mode") == "kwok":
            print("  nodes           simulated (kwok): pods are Ready at once, nothing runs")
        else:
            print(f"  real node       {node['name']} (node IP {node['node_ip']}, netns {node['netns']}, "
                  f"pods {node['pod_cidr']}, Services {node['service_cidr']}; control plane for pods at "
                  f"{node['host_ip']})")
        if node.get("gateway"):
            gw = node["gateway"]
            print(f"  Gateway         {gw['namespace']}/{gw['name']} (class {gw['class']}, {gw['implementation']}): "
                  f"{gw['url']}")
    if "startup_seconds" in state:
        print(f"  started in      {state['startup_seconds']}s")
    print(f'use it with:      eval "$({env.command("env")})"   (or: source {Path(state["home"]) / "env.sh"})')


def _demo(args: argparse.Namespace) -> int:
    from modelpilot_dev.demo import run

    return run(home=Path(args.home) if args.home else None, keep=not args.down)


def parser(prog: str = "modelpilot-dev") -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=prog, description="the local environment: a real control plane, a real node, MLflow, Prometheus")
    home_help = "state directory (default $MODELPILOT_DEV_HOME or ~/.local/state/modelpilot/dev)"
    top.add_argument("--home", help=home_help)
    sub = top.add_subparsers(dest="dev_command", required=True)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        # SUPPRESS: `modelpilot-dev --home H up` and `modelpilot-dev up --home H` both work (the hints
        # printed use the second form); the subcommand's --home, when given, wins.
        command = sub.add_parser(name, **kw)
        command.add_argument("--home", default=argparse.SUPPRESS, help=home_help)
        return command

    up = add("up", help="start everything in the background (idempotent)")
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    node_default = os.environ.get("MODELPILOT_DEV_NODE", "real")
    up.add_argument("--node", choices=("real", "kwok"), default=node_default,
                    help="'real': one real node (containerd, kubelet, kube-proxy in a network namespace, CoreDNS, "
                         "NGINX Gateway Fabric; images built here from the Dockerfiles); 'kwok': simulated nodes "
                         "only, for scale benchmarks (pods are Ready at once, nothing runs); default "
                         f"$MODELPILOT_DEV_NODE or 'real' (now: {node_default})")
    add("status", help="health of each component")
    add("down", help="stop every process the environment started and delete its state")
    add("env", help='print export lines: eval "$(modelpilot dev env)"')
    build = add("build", help="build (or find) the control-plane binaries")
    build.add_argument("--node", choices=("real", "kwok"), default="real",
                       help="'real' (default) also builds kubelet, kube-proxy, CoreDNS, NGINX Gateway Fabric and the "
                            "container images")
    demo = add("demo", help="the Quick start (`modelpilot demo`): environment up, register a model, "
                                       "serve it, predict")
    demo.add_argument("--down", action="store_true", help="stop the environment at the end")
    return top


def main(argv: list[str] | None = None, prog: str = "modelpilot-dev") -> int:
    """Run ``modelpilot-dev ARGS`` (``modelpilot dev ARGS`` and ``modelpilot demo ARGS`` land here too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    if importlib.util.find_spec("modelpilot") is None:  # not declared as a dependency: see devenv/pyproject.toml
        print("error: the modelpilot project is not installed beside modelpilot-dev; "
              "run scripts/bootstrap.sh (pip install -e '.[dev]' -e ./devenv)", file=sys.stderr)
        return 2
    if args.dev_command == "demo":
        return _demo(args)
    return _dev(args)


if __name__ == "__main__":
    sys.exit(main())
