"""The Azure ML jobs of a pair, built by pure functions (no I/O, no requests).

A pair is two `command` jobs that differ only in their training data input, their names, display
names and the `arm` tag: same code snapshot, environment, compute, resources, distribution, seed,
config file, eval input and timeout. With `training.replicates: N` the pair is built N times, seeds
`seed, seed+1, ...`, replicate k of both arms with the same seed (the recipe adds k to the seed of
the one config file that all jobs share).

    python -m training.recipe --config <config in the snapshot> --arm A
        --train-file ${{inputs.train}} [--eval-file ${{inputs.eval}}]
        --output-dir ${{outputs.arm_dir}} --pair-id P [--replicate K --parent-pair-id PARENT]

The arm folder is an `rw_mount` output at a fixed datastore path keyed by pair id and arm, so a job
restarted after a low-priority preemption (or the same pair submitted again) resumes from its last
complete checkpoint. Azure ML starts one process per GPU itself (PyTorchDistribution) and sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT: the command is never wrapped in torchrun,
which would launch every process twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from training.errors import BadInput
from training.experiment.config import ARMS, ExperimentConfig
from training.experiment.pair import derive_pair_id, pair_id_problem, replicate_ids
from training.experiment.stack import StackError, StackOutputs

# Azure ML job names: letters, digits, '-' and '_', starting with a letter or digit; the SDK
# lower-cases them, so pair ids are lower case from the start (lookups by name then match).
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,254}\Z")
# The tags that say which pair, arm and experiment a job is: an existing job with the same name
# but other values is not this pair's (another config under a reused --pair-id, a sweep).
IDENTITY_TAGS = ("pair_id", "arm", "config_sha256", "seed", "base_model_revision")
# the data asset versions the job trains and is scored on (in the derived pair id, but a reused
# --pair-id must not let a job of other data count as this pair's); older jobs lack these tags
DATA_TAGS = ("train_data", "eval_data")
# what else both arms must share; checked when a pair is completed (an arm missing from an earlier
# attempt is created now): the other arm ran with these, so the new one must too
RUN_TAGS = ("code_version", "compute", "environment", "resources")
_DATA_ID = re.compile(r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
_REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
CONFIG_FILE = "pair.yaml"  # the resolved experiment file, at the root of the code snapshot


class JobSpecError(BadInput):
    """The pair's jobs cannot be built as asked: bad input, reported before any request."""


@dataclass(frozen=True)
class ArmJob:
    """Everything that defines one job; `build_command` turns it into the SDK's object."""

    name: str
    arm: str
    pair_id: str
    replicate: int
    parent_pair_id: str
    config_file: str
    experiment_name: str
    compute: str
    environment: str
    instance_count: int
    processes_per_node: int
    shm_size: str
    timeout_s: int | None
    inputs: dict[str, str]  # name -> azureml:asset:version (uri_file)
    output_path: str | None  # azureml://datastores/<ds>/paths/pairs/<pair_id>/<arm>/ (None: the job's own)
    tags: dict[str, str] = field(default_factory=dict)
    environment_variables: dict[str, str] = field(default_factory=dict)
    # a sweep trial: the sampled values, passed as `--set field=${{inputs.<name>}}`
    search_inputs: dict[str, str] = field(default_factory=dict)  # input name -> field

    @property
    def command(self) -> str:
        parts = ["python -m training.recipe", f"--config {self.config_file}", f"--arm {self.arm}",
                 "--train-file ${{inputs.train}}"]
        if "eval" in self.inputs:
            parts.append("--eval-file ${{inputs.eval}}")
        parts += ["--output-dir ${{outputs.arm_dir}}", f"--pair-id {self.pair_id}",
                  f"--replicate {self.replicate}", f"--parent-pair-id {self.parent_pair_id}"]
        parts += [f"--set {key}=${{{{inputs.{name}}}}}" for name, key in self.search_inputs.items()]
        return " ".join(parts)


def data_asset_ids(outputs: StackOutputs) -> dict[str, str]:
    """control, experiment (and eval when the stack has one) -> azureml:name:version."""
    return {key: asset.id for key, asset in outputs.data_assets.items()}


def shared_data_warnings(outputs: StackOutputs) -> list[str]:
    """The stack's data assets that name one asset twice: both arms on the same data (the pair
    measures seed noise only), or an arm scored on its own training data (a biased verdict)."""
    ids = data_asset_ids(outputs)
    out = []
    if ids["control"] == ids["experiment"]:
        out.append(f"both arms train on the same data asset {ids['control']}: the pair can "
                   "only measure seed noise")
    for arm in ("control", "experiment"):
        if ids.get("eval") == ids[arm]:
            out.append(f"the shared eval asset is the {arm} arm's training data ({ids[arm]}): "
                       f"the {arm} arm is scored on examples it trained on")
    return out


def shm_in_largest_unit(size: str) -> str:
    """`16384m` -> `16g`: one size, one spelling, so the pair's resources tag compares sizes."""
    units = "bkmg"
    value, unit = int(size[:-1]), units.index(size[-1])
    while unit < len(units) - 1 and value % 1024 == 0:
        value, unit = value // 1024, unit + 1
    return f"{value}{units[unit]}"


def world_size(cfg: ExperimentConfig) -> int:
    """The processes of one arm (the global batch is per-device batch x accumulation x this)."""
    return cfg.azure.instance_count * cfg.azure.processes_per_node


def azure_pair_id(cfg: ExperimentConfig, outputs: StackOutputs) -> str:
    """Same resolved config (the pinned base model revision included) and same data asset
    versions -> same pair id, so submitting again finds the pair instead of training it twice.
    The world size enters too: it sets the global batch, hence the weights. Job names derive from
    it: letters, digits, '-'."""
    identity = [("world_size", str(world_size(cfg))), *sorted(data_asset_ids(outputs).items())]
    return derive_pair_id(cfg.name, cfg.sha256(), identity)


def identity_mismatch(job: ArmJob, tags: dict, completing: bool = False) -> list[str]:
    """How an existing job's tags differ from the job this pair would create (empty: same).
    `completing`: another job of the pair is about to be created beside it, so what it ran on
    (RUN_TAGS: code, compute, environment, resources) must match as well, and a job that does
    not record it (an older version's) cannot be completed. `tags` may carry DATA_TAGS read from
    the job's inputs (training.backends.azureml.recorded_tags)."""
    keys = IDENTITY_TAGS + tuple(k for k in DATA_TAGS if k in tags)
    diff = [f"{key} {tags.get(key)!r} (this pair: {job.tags.get(key)!r})"
            for key in keys if str(tags.get(key, "")) != str(job.tags.get(key, ""))]
    if completing:  # a job that does not say what it ran on cannot be matched: refused
        diff += [f"{key} not recorded (submitted by an older version of this tool)"
                 if key not in tags else f"{key} {tags[key]!r} (this pair: {job.tags.get(key)!r})"
                 for key in RUN_TAGS + DATA_TAGS
                 if key not in tags or (key in RUN_TAGS and tags[key] != job.tags.get(key))]
    return diff


def plan_pair(cfg: ExperimentConfig, outputs: StackOutputs, pair_id: str, code_version: str,
              extra_tags: dict[str, str] | None = None) -> list[ArmJob]:
    """The jobs of the pair (both arms of every replicate), checked; raises JobSpecError."""
    if problem := pair_id_problem(pair_id):
        raise JobSpecError(f"--pair-id {pair_id!r}: {problem}")
    az = cfg.azure
    try:
        compute = outputs.cluster(az.compute)
    except StackError as e:
        raise JobSpecError(str(e)) from None
    environment = az.environment or outputs.training_environment
    if not environment:
        raise JobSpecError("no environment: the stack outputs have no training_environment; set "
                           "azure.environment (name:version) in the experiment file")
    if not environment.startswith("azureml:"):
        environment = f"azureml:{environment}"
    assets = data_asset_ids(outputs)
    inputs_shared = {"eval": assets["eval"]} if "eval" in assets else {}
    timeout_s = az.max_run_minutes * 60 if az.max_run_minutes else None

    jobs = []
    for k, sub_id in enumerate(replicate_ids(pair_id, cfg.training.replicates)):
        seed = cfg.training.seed + k
        for arm in ARMS:
            tags = {"pair_id": sub_id, "arm": arm, "config_sha256": cfg.sha256(),
                    "code_version": code_version, "seed": str(seed),
                    "base_model": cfg.base_model,
                    "base_model_revision": str(cfg.base_model_revision or ""),
                    "train_data": assets[arm], "eval_data": assets.get("eval", ""),
                    "compute": compute, "environment": environment,
                    "resources": f"{az.instance_count} nodes x {az.processes_per_node}, shm "
                                 f"{shm_in_largest_unit(az.shm_size)}, timeout "
                                 f"{timeout_s or 'none'}",
                    **(extra_tags or {})}
            if cfg.training.replicates > 1:
                tags |= {"parent_pair_id": pair_id, "replicate": str(k)}
            jobs.append(ArmJob(
                name=f"{sub_id}-{arm}", arm=arm, pair_id=sub_id, replicate=k,
                parent_pair_id=pair_id, config_file=CONFIG_FILE,
                experiment_name=az.experiment_name or cfg.name, compute=compute,
                environment=environment, instance_count=az.instance_count,
                processes_per_node=az.processes_per_node, shm_size=az.shm_size,
                timeout_s=timeout_s, inputs={"train": assets[arm], **inputs_shared},
                output_path=f"azureml://datastores/{outputs.datastore}/paths/pairs/{sub_id}/{arm}/",
                tags=tags,
                environment_variables={
                    "PAIRED_FINETUNE_CODE_VERSION": code_version,  # no .git in the snapshot
                    "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                }))
    for job in jobs:
        check_references(job)
        if not JOB_NAME.match(job.name):
            raise JobSpecError(f"job name {job.name!r} is not valid for Azure ML")
    return jobs


def check_references(job: ArmJob) -> None:
    """Every ${{inputs.x}} / ${{outputs.x}} in the command exists (the SDK does not check)."""
    known = {"inputs": set(job.inputs) | set(job.search_inputs), "outputs": {"arm_dir"}}
    for kind, name in _REFERENCE.findall(job.command):
        if name not in known[kind]:
            raise JobSpecError(f"job {job.name}: the command uses ${{{{{kind}.{name}}}}} but the "
                               f"job has no such {kind[:-1]}")


def build_command(job: ArmJob, code_dir: str, search_defaults: dict | None = None):
    """The SDK's Command for one arm (imports azure-ai-ml: call inside commands). A sweep trial's
    search inputs get `search_defaults` here and their distributions when the sweep is built."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command

    inputs = {k: Input(type="uri_file", path=v, mode="ro_mount") for k, v in job.inputs.items()}
    inputs |= {name: (search_defaults or {}).get(name, 0) for name in job.search_inputs}
    # A fixed path makes the arm folder survive restarts; sweep trials each get their own.
    arm_dir = (Output(type="uri_folder", mode="rw_mount", path=job.output_path)
               if job.output_path else Output(type="uri_folder", mode="rw_mount"))
    return command(
        name=job.name,
        display_name=f"{job.pair_id} {job.arm}",
        experiment_name=job.experiment_name,
        description=f"One arm of the paired fine-tuning experiment {job.pair_id} (tag: arm)",
        tags=dict(job.tags),
        code=code_dir,
        command=job.command,
        environment=job.environment,
        environment_variables=dict(job.environment_variables),
        compute=job.compute,
        inputs=inputs,
        outputs={"arm_dir": arm_dir},
        distribution=PyTorchDistribution(process_count_per_instance=job.processes_per_node),
        instance_count=job.instance_count,
        shm_size=job.shm_size,
        timeout=job.timeout_s,
    )


def job_yaml(job: ArmJob, code_dir: str) -> str:
    """The job as the YAML that `az ml job create -f` and `azure.ai.ml.load_job` accept.

    `Command.dump()` writes YAML that `load_job` rejects; `_to_job().dump()` is what the SDK
    submits, but it writes a local code folder as `azureml:<path>`: put the path back."""
    import io

    import yaml

    buf = io.StringIO()
    build_command(job, code_dir)._to_job().dump(buf)
    data = yaml.safe_load(buf.getvalue())
    data["code"] = code_dir
    return yaml.safe_dump(data, sort_keys=False, width=100)


def asset_id(uri: str) -> str:
    """A job input's data asset, as `azureml:name:version` (the service returns the long id)."""
    match = _DATA_ID.search(uri or "")
    return f"azureml:{match['name']}:{match['version']}" if match else uri
