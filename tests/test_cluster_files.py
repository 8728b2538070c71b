"""cluster/: the files a cluster user applies, checked offline (no Ray started, no network,
nothing trained).

- aws-gpu.yaml through Ray's own cluster-launcher checks (prepare_config, validate_config),
  every node_config against botocore's RunInstances input shape, an image on every node type
  (Ray would fill in its CUDA 11.2 default otherwise), and the node pools: Ray's own node picker
  (autoscaler v1, what `ray up` clusters run) starts only on-demand nodes for a run with
  train.node_pool=ondemand and only spot nodes for train.node_pool=spot;
- every KubeRay RayJob against the RayJob CRD schema of KubeRay v1.2.2 (tests/schemas/), plainly
  and with unknown fields refused; the shell Pod against the PodSpec embedded there; the other
  core objects structurally;
- runtime_env.yaml and the RayJob's runtimeEnvYAML through ray.runtime_env.RuntimeEnv, with
  pip pins equal to pyproject.toml's dependencies (ray excepted: the image brings it);
- every `python launch.py ...` command written in cluster/README.md and in the comments of
  cluster/*.yaml (the RayJob's entrypoint too) parsed by launch.py's parser, and, for train /
  tune / compare with --config, its config and overrides loaded by load_config; every
  `section.key=value` override written outside such a command loaded onto configs/voc.yaml.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

CLUSTER = ROOT / "cluster"
AWS_YAML = CLUSTER / "aws-gpu.yaml"
DLAMI_SSM = ("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
             "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id")
RAYJOB_SCHEMA = ROOT / "tests" / "schemas" / "kuberay-v1.2.2-rayjob-v1.schema.json.gz"

# What EC2's DescribeInstanceTypes says of the instance types aws-gpu.yaml names (the fields
# Ray's AWS provider reads); `ray up` asks AWS, which a test cannot.
EC2_INSTANCE_TYPES = [
    {"InstanceType": "m5.2xlarge", "VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    {"InstanceType": "m5.4xlarge", "VCpuInfo": {"DefaultVCpus": 16}, "MemoryInfo": {"SizeInMiB": 65536}},
    {"InstanceType": "g5.12xlarge", "VCpuInfo": {"DefaultVCpus": 48}, "MemoryInfo": {"SizeInMiB": 196608},
     "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 4,
                           "MemoryInfo": {"SizeInMiB": 24576}}], "TotalGpuMemoryInMiB": 98304}},
]


def _yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --------------------------------------------------------------------------- aws-gpu.yaml

@pytest.fixture(scope="module")
def aws_config() -> dict:
    """aws-gpu.yaml as `ray up` prepares and checks it before it calls AWS."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(AWS_YAML.read_text()))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def aws_node_types(aws_config) -> dict:
    """The node types with the resources Ray's AWS provider fills in from the instance types
    (its own code, fed EC2_INSTANCE_TYPES instead of a DescribeInstanceTypes call)."""
    from ray.autoscaler._private.aws import node_provider

    saved = node_provider.list_ec2_instances
    node_provider.list_ec2_instances = lambda region, credentials=None: EC2_INSTANCE_TYPES
    try:
        filled = node_provider.AWSNodeProvider.fillout_available_node_types_resources(copy.deepcopy(aws_config))
    finally:
        node_provider.list_ec2_instances = saved
    return filled["available_node_types"]


def test_aws_config_passes_ray_s_checks(aws_config):
    from ray.autoscaler._private.util import validate_config

    assert set(aws_config["available_node_types"]) == {
        "ray.head.default", "ray.worker.gpu", "ray.worker.gpu_spot", "ray.worker.cpu"}
    typo = copy.deepcopy(aws_config)
    typo["available_node_types"]["ray.worker.gpu"]["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):  # the check is live: it refuses an unknown key
        validate_config(typo)


def test_every_node_type_names_an_image_ray_keeps(aws_config):
    """An ImageId on every node type: left out (or "latest_dlami"), Ray 2.60 fills in its own
    default Deep Learning AMI, Ubuntu 18.04 with a CUDA 11.2 driver, under CUDA 13.0 wheels."""
    from ray.autoscaler._private.aws.config import _check_ami

    images = {name: t["node_config"].get("ImageId", "") for name, t in aws_config["available_node_types"].items()}
    for name, image in images.items():
        assert image == DLAMI_SSM or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), (name, image)
    checked = copy.deepcopy(aws_config)
    _check_ami(checked)  # what `ray up` runs before it launches: it must leave the images alone
    assert {n: t["node_config"]["ImageId"] for n, t in checked["available_node_types"].items()} == images


def test_node_configs_are_valid_run_instances_requests(aws_config):
    """Each node_config is what Ray hands to EC2's RunInstances (plus counts and tags);
    botocore's own input shape checks names and types, offline."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in aws_config["available_node_types"].items():
        request = {k: v for k, v in node_type["node_config"].items() if k != "SubnetIds"}  # Ray's own key
        validate_parameters({**request, "MinCount": 1, "MaxCount": 1}, shape)
    with pytest.raises(ParamValidationError, match="MaxPrice"):  # the check is live
        validate_parameters({"ImageId": DLAMI_SSM, "MinCount": 1, "MaxCount": 1, "InstanceMarketOptions":
                             {"MarketType": "spot", "SpotOptions": {"MaxPrice": 1}}}, shape)


def test_gpu_types_differ_only_in_market_and_pool(aws_config, aws_node_types):
    types = aws_config["available_node_types"]
    od, spot = types["ray.worker.gpu"], types["ray.worker.gpu_spot"]
    assert spot["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert "InstanceMarketOptions" not in od["node_config"]
    assert {k: v for k, v in spot["node_config"].items() if k != "InstanceMarketOptions"} == od["node_config"]
    gpus = aws_node_types["ray.worker.gpu"]["resources"]["GPU"]
    assert od["resources"] == {"ondemand": gpus} and spot["resources"] == {"spot": gpus}
    filled = aws_node_types["ray.worker.gpu"]["resources"]
    assert {k: v for k, v in filled.items() if k != "memory"} == {
        "CPU": 48, "GPU": 4, "accelerator_type:A10G": 1, "ondemand": 4}


@pytest.fixture(scope="module")
def voc_worker():
    """The per-worker request of configs/voc.yaml's Train workers, as build_trainer makes it."""
    import os

    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import build_trainer

    def request(pool: str) -> dict:
        cfg = load_config(ROOT / "configs" / "voc.yaml", [f"train.node_pool={pool}"])
        return dict(build_trainer(cfg).scaling_config.resources_per_worker)

    saved = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")  # build_trainer sets it
    yield request
    if saved is None:
        os.environ.pop("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", None)
    else:
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = saved


def _pick(node_types: dict, bundles: list[dict]) -> tuple[dict, int]:
    """Ray's autoscaler v1 choice of nodes to launch for these demands on an empty cluster."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    to_add, unfulfilled = get_nodes_for(node_types, {}, "ray.head.default", 10, [dict(b) for b in bundles],
                                        utilization_scorer=scorer)
    return dict(to_add), len(unfulfilled)


@pytest.mark.parametrize("workers", [4, 8, 16])
@pytest.mark.parametrize("pool, node_type", [("ondemand", "ray.worker.gpu"), ("spot", "ray.worker.gpu_spot")])
def test_ray_s_node_picker_keeps_each_pool_to_its_node_type(aws_node_types, voc_worker, workers, pool, node_type):
    bundle = voc_worker(pool)
    assert bundle == {"CPU": 8, "GPU": 1, pool: 0.001}
    per_node = min(aws_node_types[node_type]["resources"][k] / v for k, v in bundle.items())
    assert _pick(aws_node_types, [bundle] * workers) == ({node_type: math.ceil(workers / per_node)}, 0)


def test_without_a_pool_ray_starts_spot_nodes(aws_node_types, voc_worker):
    """Why train.node_pool exists: the two GPU types tie, Ray breaks the tie by name."""
    bundle = voc_worker("")
    assert bundle == {"CPU": 8, "GPU": 1}
    assert _pick(aws_node_types, [bundle] * 4) == ({"ray.worker.gpu_spot": 1}, 0)


def test_a_pool_no_node_offers_is_refused_in_one_line(monkeypatch):
    """On a Ray started here, the placement check names the pool nobody offers."""
    from edge_ray import ray_cluster
    from edge_ray.config import load_config
    from edge_ray.train import ray_trainer

    monkeypatch.setattr(ray_cluster, "STARTED_HERE", True)
    monkeypatch.setattr(ray_cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}}])
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.node_pool=spot"])
    with pytest.raises(ray_cluster.ClusterError) as err:
        ray_trainer.run_training(cfg, checked=True)
    message = str(err.value)
    assert "\n" not in message and "train.node_pool=spot" in message and "0 spot" in message, message


def test_a_run_may_resume_in_another_pool():
    """A fixed run on on-demand nodes may go on as an elastic one on spot, and a checkpoint
    written before train.node_pool existed resumes too."""
    from edge_ray.config import load_config
    from edge_ray.train.ray_trainer import config_changes

    current = load_config(ROOT / "configs" / "tiny.yaml", ["train.node_pool=spot"]).to_dict()
    on_demand, older = copy.deepcopy(current), copy.deepcopy(current)
    on_demand["train"]["node_pool"] = "ondemand"
    del older["train"]["node_pool"]
    assert config_changes(on_demand, current) == [] == config_changes(older, current)


# --------------------------------------------------------------------------- KubeRay

def _strict(schema):
    """The schema with unknown fields refused wherever Kubernetes prunes them (objects that
    list their properties and do not preserve unknown fields): what `kubectl apply
    --validate=strict` reports."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@pytest.fixture(scope="module")
def rayjob_schema() -> dict:
    return json.loads(gzip.decompress(RAYJOB_SCHEMA.read_bytes()))


def _errors(schema: dict, doc) -> list[str]:
    import jsonschema

    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(CLUSTER.glob("*.yaml")) for d in _yaml_docs(p) if "apiVersion" in d]


def test_every_kubernetes_object_is_a_kind_checked_here():
    kinds = sorted((name, d["apiVersion"], d["kind"]) for name, d in _k8s_objects())
    assert kinds == [("kuberay-rayjob.yaml", "ray.io/v1", "RayJob"),
                     ("kuberay-storage.yaml", "v1", "Pod"),
                     ("kuberay-storage.yaml", "v1", "ServiceAccount")]


def test_rayjobs_match_the_kuberay_crd(rayjob_schema):
    jobs = [d for _, d in _k8s_objects() if d["kind"] == "RayJob"]
    assert jobs
    strict = _strict(rayjob_schema)
    for job in jobs:
        assert _errors(rayjob_schema, job) == []
        assert _errors(strict, job) == []
    typo = copy.deepcopy(jobs[0])
    typo["spec"]["shutdownAfterJobFinish"] = True  # the checks are live
    assert _errors(rayjob_schema, typo) == [] and len(_errors(strict, typo)) == 1
    typo["spec"]["backoffLimit"] = "zero"
    assert len(_errors(rayjob_schema, typo)) == 1


def test_core_objects(rayjob_schema):
    """The Pod's spec against the PodSpec the RayJob CRD embeds (KubeRay copies Kubernetes'),
    the rest by apiVersion, kind and name; the commented ReadWriteMany claim too, uncommented."""
    pod_spec = (rayjob_schema["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]
                ["headGroupSpec"]["properties"]["template"]["properties"]["spec"])
    objects = [d for name, d in _k8s_objects() if name == "kuberay-storage.yaml"]
    text = (CLUSTER / "kuberay-storage.yaml").read_text()
    commented = text[text.index("# ---\n"):].splitlines()[1:]
    claim = yaml.safe_load("\n".join(line[2:] for line in commented if line.startswith("# ")))
    for d in objects + [claim]:
        assert d["apiVersion"] == "v1" and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
        if d["kind"] == "Pod":
            assert _errors(pod_spec, d["spec"]) == [] and _errors(_strict(pod_spec), d["spec"]) == []
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    rayjob = next(d for _, d in _k8s_objects() if d["kind"] == "RayJob")
    account = next(d["metadata"]["name"] for d in objects if d["kind"] == "ServiceAccount")
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster_spec["headGroupSpec"]] + cluster_spec["workerGroupSpecs"]
    assert {p["template"]["spec"]["serviceAccountName"] for p in pods} == {account}


# --------------------------------------------------------------------------- runtime envs

def _runtime_envs() -> dict[str, dict]:
    rayjob = next(d for _, d in _k8s_objects() if d["kind"] == "RayJob")
    return {"runtime_env.yaml": yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text()),
            "kuberay-rayjob.yaml runtimeEnvYAML": yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])}


def _pyproject_dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize("name", list(_runtime_envs()))
def test_runtime_env_is_what_ray_accepts(name):
    from ray.runtime_env import RuntimeEnv

    env = _runtime_envs()[name]
    assert set(env) - RuntimeEnv.known_fields == set()  # RuntimeEnv itself lets unknown keys through
    RuntimeEnv(**env)


@pytest.mark.parametrize("name", list(_runtime_envs()))
def test_runtime_env_pins_are_pyproject_s(name):
    """The pip list is [project].dependencies without ray: the image's ray is the job's."""
    pins = _runtime_envs()[name]["pip"]["packages"]
    expected = [d for d in _pyproject_dependencies() if not re.match(r"ray\b", d)]
    assert pins == expected


def test_images_carry_pyproject_s_ray():
    ray_pin = next(d for d in _pyproject_dependencies() if re.match(r"ray\b", d)).split("==")[1]
    rayjob = next(d for _, d in _k8s_objects() if d["kind"] == "RayJob")
    spec = rayjob["spec"]["rayClusterSpec"]
    images = [c["image"] for g in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
              for c in g["template"]["spec"]["containers"]]
    images.append(yaml.safe_load(AWS_YAML.read_text())["docker"]["image"])
    images += [c["image"] for _, d in _k8s_objects() if d["kind"] == "Pod" for c in d["spec"]["containers"]]
    assert spec["rayVersion"] == ray_pin
    assert all(image.startswith(f"rayproject/ray:{ray_pin}-") for image in images), images


# --------------------------------------------------------------------------- documented commands

OVERRIDE = re.compile(r"(?<![\w.$])((?:data|model|loss|train|eval)\.[a-z_]+)=(\[[^\]]*\]|[^\s`'\"),;]*)")
# Shell variables the documented commands use, as their own text sets them (A1's `for split in
# train val`; the dry run's $PWD is the checkout).
SHELL_VARS = {"split": "train", "PWD": str(ROOT)}


@dataclass(frozen=True)
class Documented:
    where: str                   # file:line
    argv: tuple | None           # after `python launch.py`; None: overrides written outside a command
    overrides: tuple = ()


def _command(text: str, where: str) -> Documented | None:
    """The launch.py command that `text` (whatever follows `launch.py`) starts with."""
    text = re.split(r"&&|\|\||;", text)[0].strip()
    for quote in "'\"":
        if text.count(quote) % 2:
            text = text.rstrip(quote).rstrip()
    unknown = set(re.findall(r"\$(\w+)", text)) - set(SHELL_VARS)
    assert not unknown, f"{where}: shell variables {unknown} in {text!r}; add them to SHELL_VARS"
    text = re.sub(r"\$(\w+)", lambda m: SHELL_VARS[m.group(1)], text)
    argv = tuple(a for a in shlex.split(text, comments=True) if a != "...")  # "..." elides the rest
    return Documented(where, argv) if argv else None


def _spans_and_commands(text: str, path: str, first_line: int, fragments: bool) -> list[Documented]:
    """Inline code spans (which may wrap lines) and bare `python launch.py` lines of a piece of
    prose or of a comment block, and (``fragments``) the overrides written outside them."""
    found = []

    def line_of(pos: int) -> str:
        return f"{path}:{first_line + text.count(chr(10), 0, pos)}"

    rest = text
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        if "launch.py " in span:
            cmd = _command(span.split("launch.py ", 1)[1], line_of(m.start()))
            if cmd:
                found.append(cmd)
            rest = rest[:m.start()] + " " * (m.end() - m.start()) + rest[m.end():]
    offset = 0
    for line in rest.splitlines(keepends=True):
        if "python launch.py " in line:
            found.append(_command(line.split("python launch.py ", 1)[1], line_of(offset)))
        elif fragments:
            overrides = tuple(f"{k}={v[:-1] if v.endswith('.') and not v.endswith('..') else v}"
                              for k, v in OVERRIDE.findall(line))
            if overrides:
                found.append(Documented(line_of(offset), None, overrides))
        offset += len(line)
    return [f for f in found if f]


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out, start, cur = [], None, ""
    for number, line in lines:
        start = number if not cur else start
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append((start, cur + line))
        cur = ""
    if cur:
        out.append((start, cur))
    return out


def _from_readme(path: Path) -> list[Documented]:
    rel = str(path.relative_to(ROOT))
    found, prose, prose_start, fence = [], [], 1, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fence is None:
                found += _spans_and_commands("\n".join(prose), rel, prose_start, fragments=True)
                fence, prose = [], []
            else:
                for start, logical in _join_continuations(fence):
                    for part in logical.split("python launch.py ")[1:]:
                        found.append(_command(part, f"{rel}:{start}"))
                fence, prose_start = None, number + 1
            continue
        if fence is not None:
            fence.append((number, line))
        else:
            prose.append(line)
    found += _spans_and_commands("\n".join(prose), rel, prose_start, fragments=True)
    return [f for f in found if f]


def _from_yaml_comments(path: Path) -> list[Documented]:
    rel = str(path.relative_to(ROOT))
    found, block = [], []
    lines = path.read_text().splitlines() + [""]
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("#"):
            block.append((number, line.lstrip()[1:]))
            continue
        if block:
            joined = _join_continuations(block)
            text = "\n".join(t for _, t in joined)
            found += _spans_and_commands(text, rel, joined[0][0], fragments=True)
            block = []
    for doc in _yaml_docs(path):
        entrypoint = doc.get("spec", {}).get("entrypoint") if isinstance(doc.get("spec"), dict) else None
        if entrypoint:
            number = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("entrypoint:"))
            assert entrypoint.startswith("python launch.py "), entrypoint
            found.append(_command(entrypoint.split("python launch.py ", 1)[1], f"{rel}:{number} (entrypoint)"))
    return found


def _documented() -> list[Documented]:
    found = _from_readme(CLUSTER / "README.md")
    for path in sorted(CLUSTER.glob("*.yaml")):
        found += _from_yaml_comments(path)
    return found


DOCUMENTED = _documented()


def _case(doc: Documented):
    label = " ".join(doc.argv if doc.argv is not None else doc.overrides)
    return pytest.param(doc, id=f"{doc.where} {label.replace('[', '(').replace(']', ')')}")


def _selected_configs() -> dict[str, str]:
    """Configs a documented `rank-oe --select C --select-out OUT` writes: OUT is C with data.oe set."""
    out = {}
    for doc in DOCUMENTED:
        if doc.argv and doc.argv[0] == "rank-oe" and "--select-out" in doc.argv:
            out[doc.argv[doc.argv.index("--select-out") + 1]] = doc.argv[doc.argv.index("--select") + 1]
    return out


def test_the_documents_have_commands():
    """The extraction sees what the files hold (a change that hides commands fails here)."""
    wheres = {d.where.split(":")[0] for d in DOCUMENTED if d.argv}
    assert wheres == {"cluster/README.md", "cluster/aws-gpu.yaml", "cluster/kuberay-rayjob.yaml",
                      "cluster/runtime_env.yaml"}
    commands = [d.argv[0] for d in DOCUMENTED if d.argv]
    assert {"train", "tune", "eval", "rank-oe", "shards"} <= set(commands) and len(commands) >= 15
    assert any(d.argv is None for d in DOCUMENTED)


@pytest.mark.parametrize("doc", [_case(d) for d in DOCUMENTED])
def test_documented_command_parses_and_loads(doc, monkeypatch, capsys):
    import launch
    from edge_ray.config import load_config

    monkeypatch.chdir(ROOT)  # relative paths as in the checkout (and in a job's working dir)
    if doc.argv is None:
        config, overrides = "configs/voc.yaml", list(doc.overrides)
    else:
        try:
            args = launch.build_parser().parse_args(list(doc.argv))
        except SystemExit as stop:
            assert stop.code == 0 and "--help" in doc.argv, capsys.readouterr().err
            return
        if args.command not in ("train", "tune", "compare") or not getattr(args, "config", None):
            return
        config, overrides = args.config, list(args.overrides)
        config = _selected_configs().get(config, config)
    load_config(config, overrides)
