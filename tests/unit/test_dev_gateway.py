"""The real node's Gateway (NGINX Gateway Fabric + Debian's nginx): manifests, status reading, image inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelpilot_dev import gateway, images


def _by_kind(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        out.setdefault(item["kind"], []).append(item)
    return out


def test_the_gateway_pod_is_tight_and_shares_what_ngf_and_nginx_must_share() -> None:
    items = _by_kind(gateway.manifests("ngf:1", "nginx:1", "modelpilot-node"))
    pod = items["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True, "NGF signals nginx's master and reads its children"
    assert pod["nodeSelector"] == {"modelpilot.io/node": "real", "kubernetes.io/hostname": "modelpilot-node"}
    security = pod["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] == 101 and security["runAsGroup"] == 1001
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in security["sysctls"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"nginx-gateway", "nginx"}
    for container in containers.values():
        assert container["imagePullPolicy"] == "Never", "images are imported into the node, never pulled"
        sc = container["securityContext"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, "no capability at all: same uid, sysctl for port 80"
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    mounts = {name: {m["mountPath"] for m in c["volumeMounts"]} for name, c in containers.items()}
    for path in ("/etc/nginx/conf.d", "/etc/nginx/main-includes", "/etc/nginx/includes", "/var/run/nginx"):
        assert path in mounts["nginx-gateway"] and path in mounts["nginx"], path
    assert "/var/lib/nginx" in mounts["nginx"], "Debian nginx's temp paths need a writable directory"
    volumes = {v["name"] for v in pod["volumes"]}
    assert all(m["name"] in volumes for c in containers.values() for m in c["volumeMounts"])
    args = containers["nginx-gateway"]["args"]
    assert args[0] == "static-mode" and "--gatewayclass=modelpilot" in args and "--service=nginx-gateway" in args
    assert "--product-telemetry-disable" in args and "--snippets-filters" not in args
    env = {e["name"] for e in containers["nginx-gateway"]["env"]}
    assert env == {"POD_IP", "POD_NAMESPACE", "POD_NAME", "POD_UID"}


def test_class_proxy_and_gateway_fit_debian_nginx_and_the_examples() -> None:
    items = _by_kind(gateway.manifests("ngf:1", "nginx:1", "n"))
    proxy = items["NginxProxy"][0]
    assert proxy["spec"]["disableHTTP2"] is True, "nginx 1.22 does not know `http2 on;`"
    assert proxy["spec"]["ipFamily"] == "ipv4"
    gc = items["GatewayClass"][0]
    assert gc["metadata"]["name"] == "modelpilot"
    assert gc["spec"]["controllerName"].startswith("gateway.nginx.org/")
    assert gc["spec"]["parametersRef"] == {"group": "gateway.nginx.org", "kind": "NginxProxy",
                                           "name": proxy["metadata"]["name"]}
    gw = items["Gateway"][0]
    # The Gateway examples/abtest-gateway-shadow.yaml names.
    assert (gw["metadata"]["namespace"], gw["metadata"]["name"]) == ("gateway-system", "public")
    assert gw["spec"]["listeners"][0]["allowedRoutes"] == {"namespaces": {"from": "All"}}
    example = (Path(__file__).resolve().parents[2] / "examples" / "abtest-gateway-shadow.yaml").read_text()
    assert "gatewayRef: {name: public, namespace: gateway-system}" in example
    services = {s["metadata"]["name"]: s for s in items["Service"]}
    assert services["nginx-gateway"]["spec"]["ports"][0]["nodePort"] == gateway.HTTP_NODE_PORT
    assert services["nginx-gateway-health"]["spec"]["ports"][0]["targetPort"] == "health"


def test_snippets_filters_are_opt_in_with_their_rbac() -> None:
    items = _by_kind(gateway.manifests("ngf:1", "nginx:1", "n", snippets=True))
    args = items["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--snippets-filters" in args
    rules = items["ClusterRole"][0]["rules"]
    assert any("snippetsfilters" in r["resources"] for r in rules)
    assert not any("leases" in r["resources"] for r in rules), "leader election is off"


@pytest.mark.parametrize(("gw", "ok", "why"), [
    ({"metadata": {"generation": 1}}, False, "no Programmed condition"),
    ({"metadata": {"generation": 2}, "status": {"conditions": [
        {"type": "Programmed", "status": "True", "reason": "Programmed", "observedGeneration": 1}]}},
     False, "observed generation 1, current 2"),
    ({"metadata": {"generation": 2}, "status": {"conditions": [
        {"type": "Programmed", "status": "False", "reason": "Invalid", "message": "bad", "observedGeneration": 2}]}},
     False, "Programmed=False Invalid: bad"),
    ({"metadata": {"generation": 2}, "status": {"conditions": [
        {"type": "Accepted", "status": "True"},
        {"type": "Programmed", "status": "True", "reason": "Programmed", "observedGeneration": 2}]}},
     True, "Programmed=True"),
])
def test_programmed_reads_the_current_generation(gw: dict[str, Any], ok: bool, why: str) -> None:
    got, message = gateway.programmed(gw)
    assert got is ok and why in message


def test_crd_names_from_the_module_file() -> None:
    docs = [{"kind": "CustomResourceDefinition", "metadata": {"name": "nginxproxies.gateway.nginx.org"}},
            None, {"kind": "Namespace", "metadata": {"name": "x"}}]
    assert gateway.crd_names(docs) == ["nginxproxies.gateway.nginx.org"]  # type: ignore[arg-type]


def test_the_data_plane_assets_carry_what_ngf_relies_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = (images.NGF_ASSETS / "nginx.conf").read_text()
    for needed in ("pid /var/run/nginx/nginx.pid;", "js_import /usr/lib/nginx/modules/njs/httpmatches.js;",
                   "include /etc/nginx/conf.d/*.conf;", "include /etc/nginx/main-includes/*.conf;",
                   "ngx_http_js_module.so", "unix:/var/run/nginx/nginx-status.sock"):
        assert needed in conf, needed
    assert "http2" not in conf.split("#")[0]
    js = (images.NGF_ASSETS / "httpmatches.js").read_text()
    assert "export default {redirect};" in js and "internalRedirect" in js
    containerfile = (images.NGF_ASSETS / "nginx.Containerfile").read_text()
    assert "nginx-light libnginx-mod-http-js" in containerfile
    assert "[trusted=yes]" not in containerfile and "AllowUnauthenticated" not in containerfile
    assert "USER 101:1001" in containerfile
    # The build is skipped while nothing it reads changed.
    one = images.ngf_nginx_digest("base1")
    assert one == images.ngf_nginx_digest("base1") and one != images.ngf_nginx_digest("base2")
    copy = tmp_path / "ngf"
    copy.mkdir()
    for path in images.NGF_ASSETS.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(images, "NGF_ASSETS", copy)
    assert images.ngf_nginx_digest("base1") == one
    (copy / "nginx.conf").write_text(conf + "\n# changed\n")
    assert images.ngf_nginx_digest("base1") != one
