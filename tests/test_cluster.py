"""A real two-node Ray cluster with token authentication, as `docs/running.md` sets one up: a head node
and a worker node on this machine that are different hosts (the worker in its own network namespace
with its own address, each node with its own host name), both started with `RAY_AUTH_MODE=token`.
`dse run --address` runs a tiny study on it: the trials run on both nodes and the store holds each
exactly once; a client without the token is refused within seconds, saying what to set.

Needs root (network namespaces, host names) and `ip` (iproute2); skipped, saying so, only where
those are missing. Everything it starts carries a marker in its environment and is killed in the
end; the namespace and its link are removed.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from .test_resume import _marked, _wait_gone

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
SPACE = """
[study]
name = "cluster"
[data]
dataset = "digits"
[teacher]
num_pairs = 64
num_steps = 2
[space]
budget = "20k"
widths = [16]
heads = [1, 2, 4, 8]
[train]
steps = 2
batch_size = 16
[eval]
num_samples = 20
reference_num = 100
latency_num_images = 8
latency_batch = 4
latency_repeats = 1
samples_per_class = 1
onnx = false
"""


def _cannot_run() -> str:
    """Why this machine cannot host the test cluster, or ""."""
    if os.geteuid() != 0:
        return "needs root for a network namespace and a host name of its own"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs `ip` (iproute2) and `unshare` (util-linux)"
    if not RAY.is_file():
        return f"no `ray` command next to {sys.executable}"
    return ""


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, f"the Ray head exited: {proc.communicate()[0]}"
            assert time.monotonic() < deadline, f"the Ray head did not open {host}:{port}"
            time.sleep(0.2)


def _wait_line(proc: subprocess.Popen, text: str, what: str) -> None:
    seen = []
    for line in proc.stdout:  # `ray start` prints this once the node runs
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"the {what} did not start:\n{''.join(seen)}")


def _dse(*args: str, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dse", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(bool(_cannot_run()), reason=_cannot_run() or "runs")
def test_a_study_runs_on_both_nodes_of_a_token_authenticated_cluster(tmp_path):
    net = random.randrange(1, 250)
    ns, veth = f"dse-w{net}-{os.getpid()}", (f"dseh{net}x{os.getpid() % 1000}", f"dsew{net}x{os.getpid() % 1000}")
    head_ip, worker_ip = f"10.79.{net}.1", f"10.79.{net}.2"
    with socket.socket() as s:  # a free port for the head, beside whatever else runs here
        s.bind(("", 0))
        port = s.getsockname()[1]
    address = f"{head_ip}:{port}"
    token = uuid.uuid4().hex
    marker = f"DSE_CLUSTER_TEST={uuid.uuid4().hex}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="dse-c-", dir="/tmp"))  # short: Ray's socket paths live here
    base = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", marker.split("=")[0]: marker.split("=")[1]}
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        base.pop(var, None)
    node_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(ray_tmp)}
    client_home, stranger_home = tmp_path / "client", tmp_path / "stranger"
    (client_home / ".ray").mkdir(parents=True)
    (client_home / ".ray" / "auth_token").write_text(token)  # the client has the token, nothing else set
    stranger_home.mkdir()
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    run = ["run", "--space", str(space), "--address", address, "--results-dir", str(results),
           "--reports-dir", str(tmp_path / "reports"), "--cpus-per-trial", "1", "--no-live"]
    nodes: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        _sh("ip", "link", "set", veth[1], "netns", ns)
        _sh("ip", "addr", "add", f"{head_ip}/24", "dev", veth[0])
        _sh("ip", "link", "set", veth[0], "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{worker_ip}/24", "dev", veth[1])
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", veth[1], "up")

        def node(netns: list[str], hostname: str, *ray_args: str) -> subprocess.Popen:
            cmd = f"hostname {hostname} && exec {RAY} start --block --num-cpus 1 --disable-usage-stats " + " ".join(ray_args)
            proc = subprocess.Popen([*netns, "unshare", "--uts", "sh", "-c", cmd], env=node_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            nodes.append(proc)
            return proc

        head = node([], "dse-head", "--head", f"--node-ip-address={head_ip}", f"--port={port}",
                    "--include-dashboard=false", f"--temp-dir={ray_tmp / 'h'}")
        _wait_line(head, "Ray runtime started", "head node")
        _wait_port(head_ip, port, 60, head)
        worker = node(["ip", "netns", "exec", ns], "dse-worker", f"--address={address}",
                      f"--node-ip-address={worker_ip}", f"--temp-dir={ray_tmp / 'w'}")
        _wait_line(worker, "Ray runtime started", "worker node")

        # a client without the token: refused in seconds, one line that says what to set
        t0 = time.monotonic()
        refused = _dse(*run, env={**base, "HOME": str(stranger_home)}, cwd=tmp_path, timeout=120)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert time.monotonic() - t0 < 60  # dse's own start and plan; the check itself takes seconds (test_executor)
        assert refused.stderr.startswith(f"error: the Ray cluster at {address} uses token authentication"), refused.stderr
        assert "RAY_AUTH_TOKEN" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert not results.exists()  # refused before anything was written

        done = _dse(*run, env={**base, "HOME": str(client_home)}, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for proc in nodes:  # `ray start --block` stops its node's processes when it ends
            proc.send_signal(signal.SIGTERM)
        for proc in nodes:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        _wait_gone(marker, 20)
        for pid in _marked(marker):  # only processes this test started (they carry its marker)
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "link", "del", veth[0]], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    took = time.monotonic() - start

    files = sorted((results / "cluster" / "trials").glob("*.parquet"))
    rows = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    assert len(rows) == 4 and rows["trial_id"].is_unique and set(rows["status"]) == {"complete"}
    assert sorted(p.stem for p in files) == sorted(rows["trial_id"])  # the store is whole: one file per trial
    assert set(rows["host"]) == {"dse-head", "dse-worker"}, rows[["trial_id", "host"]]  # both nodes ran trials
    assert not _marked(marker) and ns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                            text=True).stdout
    print(f"two-node cluster test: {took:.0f} s")
