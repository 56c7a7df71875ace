"""The launch files: the Kubernetes manifest's wiring, run for real in two local processes;
kubectl's client-side decoding of it; the SLURM batch script's guards; and the full SLURM
rehearsal (``launch/rehearse_slurm.sh``) where SLURM is installed.

The SLURM rehearsal starts a private one-node cluster (munged, slurmctld, slurmd) as root
and runs six 2-task jobs; alone it took 15-19 minutes on the shared 2-core development
machine (benchmarks/results/slurm_rehearsal.txt), 284 s inside the suite (the session's
compilation cache already holds the tiny config's programs). CI does not install SLURM
and skips it: the suite's 20-minute budget has no room for the install and the jobs.
"""

import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import assert_equivalent, model_arrays, run_main, steps

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


# --- the Job's two pods as local processes: trained, one lost, restarted ----------------

PEER_TIMEOUTS = {"VERTEX_HEARTBEAT_TIMEOUT_S": "5", "VERTEX_SHUTDOWN_TIMEOUT_S": "5"}
RUN = ("--config.num_epochs=50", "--config.checkpoint.keep_latest=3")


def start_pods(workdir: Path, data: Path, *overrides: str) -> list[subprocess.Popen]:
    """Both pods' command, in two local processes with the pod spec's environment (not waited for).

    Only what differs off-cluster is changed: the coordinator host (pod 0's DNS name)
    becomes 127.0.0.1 on a free port, the data and workdir are local, the config is the
    tiny one, each process drives 2 CPU devices instead of 4 GPUs, and the heartbeat is
    short (PEER_TIMEOUTS). JOB_COMPLETION_INDEX is what the Job controller sets.
    """
    container = _container(_docs()["Job"])
    spec_env = _env(container)
    local = {"COORDINATOR": f"127.0.0.1:{_free_port()}", "CONFIG": "configs/xray.py:tiny",
             "WORKDIR": str(workdir), "MANIFEST": "", "BATCH_SIZE": "8",
             "EXTRA_ARGS": " ".join([f"--config.data.data_dir={data}", *overrides, "--verbosity=0"])}
    assert local.keys() <= spec_env.keys()
    base = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
            "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2", "PYTHONUNBUFFERED": "1",
            **{k: os.environ[k] for k in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS") if k in os.environ}}
    return [subprocess.Popen([*container["command"], *container["args"]], cwd=REPO,
                             env={**base, **spec_env, **local, **PEER_TIMEOUTS, "JOB_COMPLETION_INDEX": str(i)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(int(spec_env["NUM_PROCESSES"]))]


def _said(out: str) -> str:
    # a crash ends with the interpreter's list of extension modules: show what came before it
    return "\n".join(line[:300] for line in out.splitlines() if "Extension modules:" not in line)[-4000:]


@dataclasses.dataclass
class LostPod:
    """The pods' run after pod 1 was killed: its folders, the oldest checkpoint left (step
    and model arrays, read before any test changes the run), and how pod 0 ended."""

    workdir: Path
    data: Path
    first: int
    first_arrays: dict
    returncode: int
    waited_s: float  # from pod 1's kill until pod 0 stopped
    outputs: tuple[str, str]


@pytest.fixture(scope="module")
def lost_pod(tmp_path_factory) -> LostPod:
    """The pods trained until three checkpoints were saved, then pod 1 killed (-9)."""
    root = tmp_path_factory.mktemp("pods")
    workdir, data = root / "run", root / "data"
    procs = start_pods(workdir, data, *RUN)
    deadline = time.time() + 600
    try:
        while len(steps(workdir)) < 3:
            if any(p.poll() is not None for p in procs):
                pytest.fail("a pod stopped: " + " | ".join(_said(p.communicate()[0]) for p in procs))
            assert time.time() < deadline, "no checkpoints"
            time.sleep(0.2)
        procs[1].kill()
        killed = time.time()
        out0, _ = procs[0].communicate(timeout=150)
        waited = time.time() - killed
    finally:
        for p in procs:
            p.kill()
    out1, _ = procs[1].communicate()
    first = steps(workdir)[0]
    return LostPod(workdir, data, first, model_arrays(workdir, first), procs[0].returncode, waited, (out0, out1))


def test_k8s_pods_train_as_one_process_with_all_devices_does(lost_pod, tmp_path):
    """Both pods' command trains the model one process with all four devices trains (the
    step on four devices against one: tests/test_step.py)."""
    for i, out in enumerate(lost_pod.outputs):
        assert f"process {i} of 2, 2 local / 4 global devices" in out, _said(out)
    run_main({"data": lost_pod.data}, tmp_path / "single", *RUN, f"--config.max_steps={lost_pod.first}", devices=4)
    assert_equivalent(model_arrays(tmp_path / "single", lost_pod.first), lost_pod.first_arrays)


@pytest.mark.slow
def test_a_lost_pod_stops_the_other_within_the_heartbeat_timeout(lost_pod):
    assert lost_pod.returncode != 0, _said(lost_pod.outputs[0])
    assert lost_pod.waited_s < 30, f"pod 0 took {lost_pod.waited_s:.0f} s to stop after pod 1 died"


def shift_one_array(state: Path) -> None:
    """Rewrite one parameter array of an Orbax state directory with other numbers (+1), in
    place through TensorStore: the checkpoint stays well formed and decodes, to wrong values.
    (Flipped bytes in its compressed data files may instead fail to decode.)"""
    import tensorstore as ts

    base = f"file://{state.absolute()}/"
    keys = ts.KvStore.open({"driver": "ocdbt", "base": base}).result().list().result()
    name = min(k.decode()[:-len("/.zarray")] for k in keys
               if k.decode().startswith("0.") and k.decode().endswith("kernel.value/.zarray"))
    array = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": f"{name}/"}}).result()
    array.write(array.read().result() + 1).result()


@pytest.mark.slow
def test_restarted_pods_set_aside_damaged_checkpoints_resume_and_stop_together(lost_pod):
    """The Job's restart after the lost pod, with the newest step's arrays damaged (one
    decodes to wrong numbers) and the next one's metadata truncated: both set aside, the
    third used. Once the resumed run trains (its steps dispatched from a thread of their
    own), only pod 1 gets SIGTERM: both pods stop after the same step, which is saved, and
    exit cleanly."""
    workdir, data = lost_pod.workdir, lost_pod.data
    resume_at, truncated, damaged = steps(workdir)[-3:]
    ckpt = workdir / "checkpoints"
    shift_one_array(ckpt / str(damaged) / "state")
    metadata = ckpt / str(truncated) / "state" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[:40])
    metrics = workdir / "metrics.jsonl"
    logged = metrics.read_text().count("\n")
    # the step dispatched from a thread of its own: the stop's gather goes through it too
    procs = start_pods(workdir, data, *RUN, "--config.log_every_steps=1", "--config.dispatch_thread=true")
    deadline = time.time() + 600
    try:
        while metrics.read_text().count("\n") < logged + 2:  # the resumed run's own steps
            if any(p.poll() is not None for p in procs):
                pytest.fail("a pod stopped: " + " | ".join(_said(p.communicate()[0]) for p in procs))
            assert time.time() < deadline, "the resumed run logged no step"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), _said(outs[0]) + _said(outs[1])
    said = [line[:400] for line in outs[0].splitlines() if "cannot be restored" in line]
    assert any(f"checkpoints/{damaged} cannot be restored (array checksum mismatch" in s for s in said), said
    assert any(f"checkpoints/{truncated} cannot be restored" in s for s in said), said
    assert f"at step {resume_at}" in outs[0]
    aside = sorted(int(p.name.split("-")[0]) for p in (workdir / "corrupt_checkpoints").iterdir())
    assert aside == [truncated, damaged]
    # pod 0 was never signalled, yet stopped with pod 1 and saved their common step
    assert "received SIGTERM" in outs[1] and "received SIGTERM" not in outs[0]
    stopped = steps(workdir)[-1]
    assert stopped > resume_at and f"saved step {stopped} to" in outs[0], _said(outs[0])
    assert "resume with the same command" in outs[0]


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
