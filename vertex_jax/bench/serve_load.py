"""A bounded load test of the scoring service, over loopback HTTP.

    python -m vertex_jax.bench.serve_load --model EXPORT_DIR [--requests 500] [--concurrency 8]
        [--files DIR] [--warmup 200] [--threads 0] [--json FILE]

Starts the real service (``python -m vertex_jax.serve --model EXPORT_DIR`` in a subprocess
on a free loopback port), uploads real files to ``POST /predict`` (those of ``--files DIR``,
else a synthetic cohort of PNG and DICOM files of several codecs written by
:mod:`vertex_jax.synthetic` at the paper recipe's scale), ``--warmup`` requests first and
then ``--requests`` at ``--concurrency`` from as many client threads, each with its own
keep-alive connection (standard-library ``http.client``). Every other upload carries age,
sex and BMI form fields. Prints the latency percentiles (p50/p95/p99, request sent to answer
read), the throughput, the answers by status (errors: anything but 200), the server's
resident memory (VmRSS) at start, after the warm-up, halfway and at the end, sampled every
0.25 s in between (its growth over the timed requests, and over their second half, is the
"memory flat" check), the machine and the versions; ``--json`` keeps it all.

A module of its own, not ``python -m vertex_jax.bench --what=serve``: that command is absl
flags over a training config and imports JAX to time steps, while this one takes an export
folder, measures the service as deployed and needs only the ``serve`` extra (it imports no
JAX), so it runs wherever the service runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vertex_jax.bench.record import versions
from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.errors import InputDataError, MissingInputError, UserError

BOUNDARY = "vertex-load-b0undary"
FORM = {"age": "71", "sex": "F", "bmi": "24.5"}  # sent with every other upload
VERSIONS = ("vertex_jax", "onnxruntime", "fastapi", "starlette", "uvicorn", "numpy", "pydicom",
            "opencv-python-headless", "imagecodecs")
SYNTHETIC_PATIENTS = 12
# Untimed requests first: the server's allocator arenas and buffers grow over the first ~200
# (8 threads; measured: +84 MiB over 250, then +9 MiB over the next 2250 and flat).
WARMUP = 200
SYNTHETIC_SCALE = 0.5  # configs/xray.py: data.synthetic.scale, about 1200 x 800 pixels


@dataclasses.dataclass(frozen=True)
class Upload:
    """One file to send: its name, bytes and format (DICOM, PNG, JPEG, TIFF)."""

    name: str
    data: bytes
    format: str


def multipart(upload: Upload, fields: dict[str, str]) -> tuple[bytes, str]:
    """The multipart/form-data body of ``upload`` with ``fields``, and its Content-Type."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{upload.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + upload.data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"


def read_uploads(folder: str | Path) -> list[Upload]:
    """Every DICOM, PNG, JPEG or TIFF file under ``folder`` (by content, as the service sniffs
    it), in name order; a user error when there is none."""
    from vertex_jax.serve.upload import sniff_format

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"--files {folder}: no such folder", todo="give a folder of DICOM/PNG/JPEG files")
    uploads = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.stat().st_size and (fmt := sniff_format(path, path.name)):
            uploads.append(Upload(path.name, path.read_bytes(), fmt))
    if not uploads:
        raise InputDataError(f"--files {folder}: no DICOM, PNG, JPEG or TIFF file in it",
                             todo="give a folder of radiographs, or leave --files out for synthetic ones")
    return uploads


def synthetic_uploads(folder: Path, *, patients: int = SYNTHETIC_PATIENTS, scale: float = SYNTHETIC_SCALE,
                      seed: int = 0) -> list[Upload]:
    """A synthetic cohort's images (PNG and DICOM of the generator's codec mix) written under
    ``folder``, read back as uploads."""
    from vertex_jax.synthetic.cohort import generate_cohort

    generate_cohort(folder, num_patients=patients, scale=scale, seed=seed, workers=1, formats="mix")
    return read_uploads(folder / "images")


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (``/proc/<pid>/status`` VmRSS); None where
    there is no /proc (not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Service:
    """``python -m vertex_jax.serve`` in a subprocess on a loopback port; a context manager
    that waits for ``GET /health`` and stops the server on exit."""

    def __init__(self, model: str | Path, log: Path, *, threads: int = 0, timeout_s: float = 120.0):
        self.model, self.log, self.threads, self.timeout_s = Path(model), log, threads, timeout_s
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.health: dict[str, Any] = {}

    def __enter__(self) -> "Service":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vertex_jax.serve", "--model", str(self.model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--threads", str(self.threads)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-2000:]
                self.__exit__(None, None, None)
                raise UserError(f"the service exited with status {self.proc.returncode} before answering "
                                f"GET /health:\n{tail}", todo="fix what the server's lines above say (--model?)")
            try:
                status, body = request(self.port, "GET", "/health")
                if status == 200:
                    self.health = json.loads(body)
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise UserError(f"the service did not answer GET /health within {self.timeout_s:g} s",
                                todo=f"see its log, {self.log}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def rss_mib(self) -> float | None:
        return rss_mib(self.proc.pid) if self.proc else None


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send_all(port: int, uploads: Sequence[Upload], count: int, concurrency: int, offset: int = 0
             ) -> tuple[list[float], Counter, float]:
    """``count`` uploads (round robin from ``offset``) to ``POST /predict`` from ``concurrency``
    threads, each with its own keep-alive connection (opened again after a failure).
    Returns the latencies in seconds, the answers by status ("ConnectionError"-style names for
    requests that got none) and the wall time."""
    bodies = [multipart(u, FORM if i % 2 else {}) for i, u in enumerate(uploads)]
    next_index, lock = iter(range(count)), threading.Lock()
    latencies: list[float] = []
    statuses: Counter = Counter()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                body, content_type = bodies[(offset + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                    response = conn.getresponse()
                    response.read()
                    status: str = str(response.status)
                except (OSError, http.client.HTTPException) as error:
                    status = type(error).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] += 1
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return latencies, statuses, time.perf_counter() - start


def machine() -> dict[str, Any]:
    """The CPU model, its cores (and those this process may use), the OS, the load average."""
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": os.cpu_count(), "usable_cores": usable,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _growth(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


class RssSampler:
    """The server's VmRSS every ``every_s`` seconds in a background thread, while in use:
    ``samples`` are (seconds since start, MiB)."""

    def __init__(self, pid: int, every_s: float = 0.25):
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            if (value := rss_mib(self.pid)) is not None:
                self.samples.append((time.perf_counter() - start, value))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, seconds: float) -> float | None:
        """The last sample taken at or before ``seconds``."""
        before = [value for t, value in self.samples if t <= seconds]
        return before[-1] if before else None


def run_load(model: str | Path, *, requests: int = 500, concurrency: int = 8, files: str | Path | None = None,
             warmup: int = WARMUP, threads: int = 0) -> dict[str, Any]:
    """Start the service on ``model``, send ``warmup`` then ``requests`` uploads at
    ``concurrency``; returns the report (see the module docstring)."""
    if requests < 1 or concurrency < 1 or warmup < 0:
        raise UserError(f"--requests ({requests}) and --concurrency ({concurrency}) must be >= 1, "
                        f"--warmup ({warmup}) >= 0", todo="e.g. --requests 500 --concurrency 8")
    from vertex_jax.serve.scoring import resolve_model

    resolve_model(model)  # a wrong --model is told before anything starts
    with tempfile.TemporaryDirectory(prefix="vertex-load-") as tmp:
        uploads = read_uploads(files) if files else synthetic_uploads(Path(tmp) / "cohort")
        load_before = machine()["load_average"]
        with Service(model, Path(tmp) / "server.log", threads=threads) as service:
            rss = {"start": service.rss_mib}
            warm_statuses = send_all(service.port, uploads, warmup, concurrency)[1] if warmup else Counter()
            rss["after_warmup"] = service.rss_mib
            with RssSampler(service.proc.pid) as sampler:
                latencies, statuses, wall = send_all(service.port, uploads, requests, concurrency, offset=warmup)
            rss["end"] = service.rss_mib
            rss["halfway"] = sampler.at(wall / 2)
            rss["peak"] = max((v for _, v in sampler.samples), default=None)
            log = service.log.read_text()
    ms = np.array(latencies) * 1000
    sizes = [len(u.data) for u in uploads]
    return {
        "command": "python -m vertex_jax.bench.serve_load " + " ".join(sys.argv[1:]),
        "model": {"path": str(model), **service.health},
        "files": {"source": str(files) if files else f"synthetic ({SYNTHETIC_PATIENTS} patients, scale "
                                                     f"{SYNTHETIC_SCALE:g}, codec mix)",
                  "count": len(uploads), "formats": dict(Counter(u.format for u in uploads)),
                  "mean_bytes": int(np.mean(sizes))},
        "requests": requests, "concurrency": concurrency, "warmup": warmup,
        "warmup_errors": sum(n for s, n in warm_statuses.items() if s != "200"),
        "wall_s": wall, "throughput_rps": requests / wall,
        "latency_ms": {name: float(np.percentile(ms, q)) for name, q in
                       (("min", 0), ("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} | {"mean": float(ms.mean())},
        "statuses": dict(sorted(statuses.items())),
        "errors": sum(n for s, n in statuses.items() if s != "200"),
        "server_500s_logged": log.count("bug:"),
        "rss_mib": {**rss, "growth_after_warmup": _growth(rss["end"], rss["after_warmup"]),
                    "growth_second_half": _growth(rss["end"], rss["halfway"]),
                    "growth_total": _growth(rss["end"], rss["start"])},
        "machine": {**machine(), "load_average_before": load_before},
        "versions": versions(VERSIONS),
    }


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MiB"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f} MiB"


def format_report(report: dict[str, Any]) -> str:
    """The report in a few lines."""
    lat, rss, m, files = report["latency_ms"], report["rss_mib"], report["machine"], report["files"]
    growth, late = rss["growth_after_warmup"], rss["growth_second_half"]
    return "\n".join([
        f"model {report['model'].get('model', report['model']['path'])} (step {report['model'].get('step')}); "
        f"{files['count']} files ({', '.join(f'{n} {k}' for k, n in files['formats'].items())}, "
        f"mean {files['mean_bytes'] / 1e6:.2f} MB) from {files['source']}",
        f"{report['requests']} requests at concurrency {report['concurrency']} after {report['warmup']} warm-up: "
        f"{report['wall_s']:.1f} s, throughput {report['throughput_rps']:.2f} req/s",
        f"latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
        f"(min {lat['min']:.1f}, mean {lat['mean']:.1f}, max {lat['max']:.1f})",
        f"answers: {', '.join(f'{s}: {n}' for s, n in report['statuses'].items())}; errors {report['errors']}",
        f"server RSS: start {_mib(rss['start'])}, after warm-up {_mib(rss['after_warmup'])}, end {_mib(rss['end'])}, "
        f"peak {_mib(rss['peak'])} (growth over the timed requests {_signed(growth)}, over their second half "
        f"{_signed(late)})",
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['os']}, load average "
        f"before {', '.join(f'{x:.2f}' for x in m['load_average_before'] or [])}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.bench.serve_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the export's output folder (as python -m vertex_jax.serve takes)")
    p.add_argument("--requests", type=int, default=500, help="timed requests (default 500)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads, one connection each (default 8)")
    p.add_argument("--files", help="folder of DICOM/PNG/JPEG/TIFF files to upload (default: a synthetic cohort)")
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"untimed requests first (default {WARMUP})")
    p.add_argument("--threads", type=int, default=0, help="the server's onnxruntime threads (0: its default)")
    p.add_argument("--json", help="also write the report here")
    return add_verbosity(p)


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """The command; user errors print one block and return 2."""
    args = parser().parse_args(argv)
    report = run_load(args.model, requests=args.requests, concurrency=args.concurrency, files=args.files,
                      warmup=args.warmup, threads=args.threads)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
