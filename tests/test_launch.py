"""The launch files: the Kubernetes manifest's wiring, run for real in two local processes;
kubectl's client-side decoding of it; the SLURM batch script's guards; and the full SLURM
rehearsal (``launch/rehearse_slurm.sh``) where SLURM is installed.

The SLURM rehearsal starts a private one-node cluster (munged, slurmctld, slurmd) as root
and runs six 2-task jobs; alone it took 15-19 minutes on the shared 2-core development
machine (benchmarks/results/slurm_rehearsal.txt), 284 s inside the suite (the session's
compilation cache already holds the tiny config's programs). CI does not install SLURM
and skips it: the suite's 20-minute budget has no room for the install and the jobs.
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import assert_equivalent, model_arrays, run_main

yaml = pytest.importorskip("yaml")  # PyYAML: already in the environment (a dependency of the stack)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "launch" / "k8s-indexed-job.yaml"
SBATCH = REPO / "launch" / "slurm.sbatch"


def _docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def _container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_k8s_wiring_matches_dns_and_indexes():
    """Coordinator = pod 0's DNS name through the headless Service; process id = the index."""
    docs = _docs()
    service, job = docs["Service"], docs["Job"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None"  # headless: per-pod DNS records
    # The Job controller labels its pods job-name=<job name>; the Service must select them,
    # and a pod's hostname is <job name>-<index> under the subdomain = the Service's name.
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    assert pod["subdomain"] == service["metadata"]["name"]
    assert spec["completionMode"] == "Indexed"  # sets JOB_COMPLETION_INDEX in each pod
    container = _container(job)
    env = _env(container)
    host, port = env["COORDINATOR"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}" and int(port) > 0
    assert spec["completions"] == spec["parallelism"] == int(env["NUM_PROCESSES"])
    assert container["command"] == ["bash", "-c"]
    words = shlex.split(container["args"][0])
    assert '--coordinator=$COORDINATOR' in words and '--num_processes=$NUM_PROCESSES' in words
    assert '--process_id=$JOB_COMPLETION_INDEX' in words


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_k8s_manifest_decodes_with_kubectl():
    """kubectl decodes each object into its typed API struct and drops nothing.

    ``kubectl apply --dry-run=client`` (and ``create --dry-run=client``) still ask a server
    for the API discovery and OpenAPI schema, even with ``--validate=false``, so without a
    cluster we use kubectl's --local mode, which decodes into the typed Go structs (a wrong
    type fails) and prints the object back; unknown or misspelt fields would be dropped, so
    the printed object must contain every field of the file.
    """
    commands = {"Job": ["set", "env", "--local", "-f", "-", "-o", "json", "KUBECTL_DECODE_CHECK=1"],
                "Service": ["set", "selector", "--local", "-f", "-", "-o", "json", "job-name=vertex-jax"]}
    docs = _docs()
    assert docs.keys() == commands.keys()

    def contained(a, b, path="") -> None:
        if isinstance(a, dict):
            assert isinstance(b, dict), path
            for k, v in a.items():
                if v in ("", None) and k not in b:
                    continue  # an empty value is omitted when printed (omitempty)
                assert k in b, f"kubectl dropped {path}/{k}"
                contained(v, b[k], f"{path}/{k}")
        elif isinstance(a, list):
            assert isinstance(b, list) and len(b) >= len(a), path
            for i, (x, y) in enumerate(zip(a, b)):
                contained(x, y, f"{path}[{i}]")
        else:
            assert str(a) == str(b), f"{path}: {a!r} became {b!r}"  # quantities print as strings

    for kind, doc in docs.items():
        out = subprocess.run(["kubectl", *commands[kind]], input=yaml.safe_dump(doc), text=True,
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        contained(doc, json.loads(out.stdout), kind)


def test_k8s_pod_command_runs_as_two_processes_and_matches_one(tmp_path):
    """Both pods' command, in two local processes with the pod spec's environment, trains
    the model one process with all four devices trains (the step on four devices against
    one: tests/test_step.py).

    Only what differs off-cluster is changed: the coordinator host (pod 0's DNS name)
    becomes 127.0.0.1 on a free port, the data and workdir are local, the config is the
    tiny one, and each process drives 2 CPU devices instead of 4 GPUs. JOB_COMPLETION_INDEX
    is what the Job controller sets.
    """
    job = _docs()["Job"]
    container = _container(job)
    spec_env = _env(container)
    n = int(spec_env["NUM_PROCESSES"])
    local = {"COORDINATOR": f"127.0.0.1:{_free_port()}", "CONFIG": "configs/xray.py:tiny",
             "WORKDIR": str(tmp_path / "run"), "MANIFEST": "", "BATCH_SIZE": "8",
             "EXTRA_ARGS": f"--config.data.data_dir={tmp_path / 'data'} --config.max_steps=2 --verbosity=0"}
    assert local.keys() <= spec_env.keys()
    base = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
            "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    procs = [subprocess.Popen([*container["command"], *container["args"]], cwd=REPO,
                              env={**base, **spec_env, **local, "JOB_COMPLETION_INDEX": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n)]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        # a crash ends with the interpreter's list of extension modules: show what came before it
        said = [line for line in out.splitlines() if "Extension modules:" not in line][-40:]
        assert p.returncode == 0, (f"process {i} exited {p.returncode}; other: {[q.returncode for q in procs]}\n"
                                   + "\n".join(line[:300] for line in said))
        assert f"process {i} of {n}, 2 local / {2 * n} global devices" in out, out[-3000:]
    run_main({"data": tmp_path / "data"}, tmp_path / "single", "--config.max_steps=2", devices=2 * n)
    assert_equivalent(model_arrays(tmp_path / "single", 2), model_arrays(tmp_path / "run", 2))


def test_sbatch_guards_and_srun_launch(tmp_path):
    """The batch script launches through srun (SLURM's variables, no --coordinator) and
    refuses the paper's config without a manifest before starting anything."""
    text = SBATCH.read_text()
    assert "srun " in text and "--coordinator" not in text
    out = subprocess.run(["bash", str(SBATCH), str(tmp_path / "w")], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"]}, timeout=60)
    assert out.returncode == 2 and "set MANIFEST=" in out.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("slurmctld") is None,
                    reason="SLURM not installed (apt-get install munge slurmctld slurmd slurm-client); "
                           "CI does not install it: the install and the rehearsal do not fit its 20-minute suite budget")
@pytest.mark.skipif(os.geteuid() != 0, reason="the SLURM rehearsal runs slurmd and munged as root")
def test_slurm_rehearsal(tmp_path):
    """launch/rehearse_slurm.sh: the four checks pass and it leaves nothing behind."""
    report = tmp_path / "report.txt"
    out = subprocess.run([str(REPO / "launch" / "rehearse_slurm.sh"), "--no-install", f"--report={report}"],
                         capture_output=True, text=True, timeout=2700,
                         env=os.environ | {"PYTHON": sys.executable})  # this interpreter, wherever its venv is
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    text = report.read_text()
    assert "4/4 checks passed" in text, text
    assert "no process of the cluster left" in out.stdout and "removed" in out.stdout
