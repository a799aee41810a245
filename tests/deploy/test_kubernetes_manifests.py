"""The Helm chart of the control plane (deploy/helm/nbcloud) and the notebook
manifests of the kubernetes runtime's design (deploy/kubernetes): linted and
rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK; no helm
binary is installable from the registries reached here), and every rendered
object validated against the Kubernetes OpenAPI schema (kubernetes-validate,
strict: unknown fields are errors). No API server runs here: nothing is applied."""

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from support.paths import ROOT

CHART = ROOT / "deploy" / "helm" / "nbcloud"
NOTEBOOK = ROOT / "deploy" / "kubernetes" / "notebook.yaml"
KUBERNETES = "1.30.0"  # the oldest minor the chart's kubeVersion (>=1.27) still sees supported
PRIVATE = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"}


def _render(values: dict | None = None) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(
        values, name="nbc", namespace="nbcloud", is_install=True
    )
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _validate(objects: list[dict]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {exc.path}")


def _pods(objects: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for obj in objects:
        if obj["kind"] == "Pod":
            found.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] in ("Deployment", "Job"):
            found.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return found


def test_helm_lints_the_chart_strictly_without_a_warning():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("runtime_rights", [False, True])
def test_every_rendered_object_is_valid_kubernetes(runtime_rights):
    objects = _render({"kubernetesRuntime": {"enabled": runtime_rights}})
    kinds = sorted(obj["kind"] for obj in objects)
    expected = ["ConfigMap", "Deployment", "Deployment", "Deployment", "Ingress", "Job"]
    expected += ["PodDisruptionBudget", "Service"]
    if runtime_rights:
        expected += ["Namespace", "Role", "RoleBinding", "ServiceAccount"]
    assert kinds == sorted(expected)
    _validate(objects)


def test_control_plane_pods_run_unprivileged_without_an_api_token():
    for name, spec in _pods(_render()):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name


def test_one_beat_and_the_schema_migrated_before_the_pods_roll():
    objects = {obj["metadata"]["name"]: obj for obj in _render()}
    beat = objects["nbc-nbcloud-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    migrate = next(o for o in objects.values() if o["kind"] == "Job")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "migrate",
        "--noinput",
    ]


def test_the_ingress_sends_the_platform_and_every_notebook_origin_to_web():
    ingress = next(
        o for o in _render({"notebookDomain": "nb.example.net"}) if o["kind"] == "Ingress"
    )
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts == ["nbcloud.example.org", "*.nb.example.net"]
    backends = {
        r["http"]["paths"][0]["backend"]["service"]["name"] for r in ingress["spec"]["rules"]
    }
    assert backends == {"nbc-nbcloud-web"}


def test_a_bad_value_is_refused_naming_it():
    with pytest.raises(helm.HelmError) as refused:
        _render({"publicUrl": "nbcloud.example.org"})
    assert "publicUrl" in str(refused.value)


def test_the_notebook_manifests_of_the_design_are_valid_and_keep_the_sandbox_promises():
    objects = [doc for doc in yaml.safe_load_all(NOTEBOOK.read_text()) if doc]
    _validate(objects)
    ((_, pod),) = _pods(objects)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] >= 2_000_000_000  # a uid of its own
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    editor = pod["containers"][0]
    assert editor["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert editor["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["initContainers"][0]["name"] == "restore-workspace"
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    public = next(
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    )
    assert set(public["except"]) >= PRIVATE
    (source,) = policy["spec"]["ingress"][0]["from"]
    assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
