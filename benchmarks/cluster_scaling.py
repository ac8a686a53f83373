"""The same smoke search on a one-node and on a two-node Ray cluster (1 CPU each, this machine).

    .venv/bin/python benchmarks/cluster_scaling.py [--trials 4]

Starts a Ray head with 1 CPU on 127.0.0.1 (``ray start --head --block``, token authentication
disabled) and runs ``spaces/smoke.yaml`` on it with ``--address``; then adds a worker node with 1
CPU and runs the same search again. The sampler is ``random`` (seeded), so both runs propose the
same trials whatever order they finish in, and each run has its own storage, so no stage cache
carries over. Prints each run's search time (``run.json``'s ``search_seconds``: Ray start to the
last trial, without the data and base model, which each run makes alike) and wall time, and the
speed-up. The nodes are stopped by their process groups, never with ``ray stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                             "--block", *args], env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=grace)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue


def alive_nodes(address: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{address}', logging_level='ERROR', log_to_driver=False);"
                               "print(sum(n['Alive'] for n in ray.nodes()))"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def wait_for(address: str, nodes: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while alive_nodes(address) < nodes:
        if time.monotonic() > deadline:
            raise SystemExit(f"the cluster at {address} did not reach {nodes} nodes in {timeout:.0f}s")
        time.sleep(1)


def search(address: str, work: Path, name: str, trials: int) -> tuple[float, float, dict]:
    """One smoke search on ``address``; (search_seconds, wall seconds, run.json)."""
    run_dir = work / name
    command = [sys.executable, "-m", "search", "run", "spaces/smoke.yaml", "--run-dir", str(run_dir),
               "--address", address, "--storage", str(work / f"storage-{name}"),
               "--set", f"storage.cache_dir={work / 'cache'}", "--set", f"budget.trials={trials}",
               "--set", "budget.sampler=random", "--set", "budget.max_concurrent=2"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: the search failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    info = json.loads((run_dir / "run.json").read_text())
    return info["search_seconds"], wall, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per search (default 4)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cluster-scaling-"))
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                      log=work / "head.log")
    worker = None
    try:
        wait_for(address, 1)
        one = search(address, work, "one-node", args.trials)
        worker = start_node(f"--address={address}", log=work / "worker.log")
        wait_for(address, 2)
        two = search(address, work, "two-nodes", args.trials)
    finally:
        if worker is not None:
            stop_node(worker)
        stop_node(head)
    print(f"{'cluster':<10}{'search_s':>10}{'wall_s':>9}{'completed':>11}")
    for name, (search_s, wall, info) in (("1 node", one), ("2 nodes", two)):
        print(f"{name:<10}{search_s:>10.1f}{wall:>9.1f}{info['completed_trials']:>11}")
    print(f"speed-up of the search with the second node: {one[0] / two[0]:.2f}x ({args.trials} trials, 1 CPU per node, "
          f"random sampler, seed 0); work folder {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
