"""deploy.yml: preview on pull requests, up on main, destroy by hand; OIDC only; one deploy of a
stack at a time; least permissions; stack outputs saved without secrets."""

import re
import tomllib

import pytest

from tests.workflows.helpers import DEPLOY, ROOT, load_workflow

STACK_EXPR = "inputs.stack || 'dev'"


@pytest.fixture(scope="module")
def deploy() -> dict:
    return load_workflow(DEPLOY)


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def pulumi_step(job: dict) -> dict:
    (step,) = steps_using(job, "pulumi/actions")
    return step


def logs_in_to_azure(job: dict) -> bool:
    return bool(steps_using(job, "azure/login"))


def test_no_client_secret_anywhere():
    text = DEPLOY.read_text(encoding="utf-8")
    assert not re.search(r"CLIENT_SECRET", text, re.IGNORECASE)
    assert not re.search(r"client-secret|creds:|AZURE_CREDENTIALS", text, re.IGNORECASE)


def test_azure_login_is_oidc_from_repository_variables(deploy):
    jobs = [job for job in deploy["jobs"].values() if logs_in_to_azure(job)]
    assert len(jobs) == 3
    for job in jobs:
        (login,) = steps_using(job, "azure/login")
        assert login["with"] == {
            "client-id": "${{ vars.AZURE_CLIENT_ID }}",
            "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
            "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
        }
    # The azure-native provider uses the same identity through GitHub's OIDC token.
    assert deploy["env"]["ARM_USE_OIDC"] == "true"
    assert deploy["env"]["ARM_CLIENT_ID"] == "${{ vars.AZURE_CLIENT_ID }}"


def test_permissions_are_least(deploy):
    assert deploy["permissions"] == {}
    for name, job in deploy["jobs"].items():
        permissions = job["permissions"]
        assert permissions.get("contents") == "read", name
        # id-token: write exactly on the jobs that log in to Azure.
        assert (permissions.get("id-token") == "write") == logs_in_to_azure(job), name
        allowed = {"contents", "id-token"} | ({"pull-requests"} if name == "preview" else set())
        assert set(permissions) <= allowed, name
        assert all(v in ("read", "write") for v in permissions.values()), name


def test_pulumi_token_comes_from_a_secret_on_the_pulumi_steps_only(deploy):
    for job in deploy["jobs"].values():
        for step in job["steps"]:
            token = step.get("env", {}).get("PULUMI_ACCESS_TOKEN")
            needs_it = step.get("uses", "").startswith("pulumi/actions@") or "pulumi " in step.get(
                "run", ""
            )
            assert (token == "${{ secrets.PULUMI_ACCESS_TOKEN }}") == needs_it, step
        assert "PULUMI_ACCESS_TOKEN" not in job.get("env", {})
    assert "PULUMI_ACCESS_TOKEN" not in deploy["env"]


def test_triggers(deploy):
    on = deploy["on"]
    for event in ("pull_request", "push"):
        paths = on[event]["paths"]
        assert "infra/**" in paths  # the program and the policy pack (infra/policy)
        assert "Pulumi*.yaml" in paths
        assert "environment/**" in paths  # infra registers environment/conda.yml
    assert on["push"]["branches"] == ["main"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["command"]["options"] == ["preview", "up", "destroy"]
    assert inputs["stack"]["default"] == "dev"


def test_preview_on_pull_requests_with_the_policy_pack_and_a_comment(deploy):
    job = deploy["jobs"]["preview"]
    assert "github.event_name == 'pull_request'" in job["if"]
    # Forks get no secrets and no OIDC token.
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]
    assert job["permissions"]["pull-requests"] == "write"
    step = pulumi_step(job)["with"]
    assert step["command"] == "preview"
    assert step["policyPacks"] == "infra/policy"
    assert step["comment-on-pr"] is True
    assert step["stack-name"] == "${{ env.STACK }}"
    assert "environment" not in job  # its OIDC subject is repo:OWNER/REPO:pull_request


def test_up_on_main_in_an_environment(deploy):
    job = deploy["jobs"]["up"]
    assert "github.ref == 'refs/heads/main'" in job["if"]
    assert "github.event_name == 'push'" in job["if"]
    assert job["environment"]["name"] == "${{ " + STACK_EXPR + " }}"
    step = pulumi_step(job)["with"]
    assert step["command"] == "up"
    assert step["policyPacks"] == "infra/policy"


def test_destroy_only_by_hand_in_an_environment(deploy):
    job = deploy["jobs"]["destroy"]
    assert "github.event_name == 'workflow_dispatch'" in job["if"]
    assert "inputs.command == 'destroy'" in job["if"]
    assert job["environment"]["name"] == "${{ " + STACK_EXPR + " }}"
    assert pulumi_step(job)["with"]["command"] == "destroy"


def test_the_stack_is_the_chosen_one_everywhere(deploy):
    assert deploy["env"]["STACK"] == "${{ " + STACK_EXPR + " }}"
    for job in deploy["jobs"].values():
        assert pulumi_step(job)["with"]["stack-name"] == "${{ env.STACK }}"
        assert pulumi_step(job)["with"]["work-dir"] == "."


def test_two_deploys_of_one_stack_never_overlap(deploy):
    jobs = deploy["jobs"]
    groups = {name: jobs[name]["concurrency"] for name in ("up", "destroy")}
    for concurrency in groups.values():
        assert STACK_EXPR in concurrency["group"]  # keyed on the stack
        assert concurrency["cancel-in-progress"] is False  # never stop a deploy half-way
    assert groups["up"]["group"] == groups["destroy"]["group"]
    # Previews may be cancelled, so they never share the deploy group (a queued preview would
    # otherwise replace a queued deploy).
    assert jobs["preview"]["concurrency"]["group"] != groups["up"]["group"]


def test_stack_outputs_are_saved_as_an_artifact_without_secrets(deploy):
    job = deploy["jobs"]["up"]
    names = [s.get("uses", s.get("run", "")) for s in job["steps"]]
    (save,) = [s for s in job["steps"] if "pulumi stack output" in s.get("run", "")]
    assert save["run"].strip() == 'pulumi stack output --json --stack "$STACK" > stack-outputs.json'
    for step in (s for j in deploy["jobs"].values() for s in j["steps"]):
        assert "--show-secrets" not in step.get("run", "") + str(step.get("with", "")), step
    (upload,) = steps_using(job, "actions/upload-artifact")
    assert upload["with"]["path"] == "stack-outputs.json"
    assert upload["with"]["if-no-files-found"] == "error"
    # After `up`, in that order.
    assert names.index(pulumi_step(job)["uses"]) < names.index(save["run"])
    assert names.index(save["run"]) < names.index(upload["uses"])


def test_stack_name_is_checked_before_anything_uses_it(deploy):
    for job in deploy["jobs"].values():
        first = job["steps"][0]
        assert "$STACK" in first["run"]
        assert "exit 2" in first["run"]


def test_infra_dependencies_without_torch(deploy):
    for job in deploy["jobs"].values():
        installs = [s["run"] for s in job["steps"] if "pip install" in s.get("run", "")]
        # into .venv: Pulumi.yaml and the policy pack run the program with the repo's virtualenv
        assert installs == ["python -m venv .venv\n.venv/bin/python -m pip install --quiet -e '.[infra]'\n"]
        (setup,) = steps_using(job, "actions/setup-python")
        assert setup["with"]["cache"] == "pip"


def test_the_pulumi_cli_matches_the_sdk_pin(deploy):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [
        d
        for d in pyproject["project"]["optional-dependencies"]["infra"]
        if d.startswith("pulumi==")
    ]
    for job in deploy["jobs"].values():
        assert f"pulumi=={pulumi_step(job)['with']['pulumi-version']}" == pin


def github_section() -> str:
    """The page on deploying from GitHub (once the README's section of that name)."""
    return (ROOT / "docs" / "github.md").read_text(encoding="utf-8")


def test_docs_set_up_every_variable_and_secret_the_workflow_reads():
    text = DEPLOY.read_text(encoding="utf-8")
    section = github_section()
    variables = set(re.findall(r"\bvars\.(\w+)", text))
    secrets = set(re.findall(r"\bsecrets\.(\w+)", text))
    assert variables == {"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_SUBSCRIPTION_ID"}
    assert secrets == {"PULUMI_ACCESS_TOKEN"}
    for name in variables:
        assert f"gh variable set {name} " in section
    for name in secrets:
        assert f"gh secret set {name} " in section


def test_docs_create_the_federated_credentials_the_jobs_present():
    section = github_section()
    for subject in ("pull_request", "environment:dev", "ref:refs/heads/main"):
        assert f"repo:$REPO:{subject}" in section
    for command in ("az ad app create", "az ad sp create", "az ad app federated-credential create"):
        assert command in section
    assert "az role assignment create" in section
    assert "User Access Administrator" in section
    assert "Role Based Access Control Administrator" in section
    assert "environments/dev" in section  # the environment, with reviewers
    assert "stack-outputs-dev" in section  # where the outputs artifact is
