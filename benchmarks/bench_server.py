"""Server throughput and latency on the demo model: jobs/s with 1 and N concurrent clients, time from cancel to stop,
and a kill-and-restart of a full queue.

    python benchmarks/bench_server.py --jobs 16 --clients 8 --steps 30 --threads 2 --out benchmarks/results/server-cpu.json

Starts `sdxl serve --model demo` itself on 127.0.0.1 (a free port, a temporary data folder) and stops it.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPT = "a red circle on a blue background"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data: Path, port: int, threads: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "sdxl.cli", "serve", "--model", "demo", "--data", str(data), "--port",
               str(port), "--threads", str(threads), "--log-level", "warning", *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/capabilities", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start")


POLL_S = 0.1  # how often a waiting client asks (8 clients at 10 ms would take a core from the worker on 2 cores)


def wait(client: httpx.Client, job_id: str, poll: float | None = None) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(POLL_S if poll is None else poll)


def throughput(url: str, jobs: int, clients: int, steps: int) -> dict:
    """`jobs` jobs spread over `clients` threads, each submitting and waiting for one job at a time."""
    per_client = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()

    def run(count: int, index: int):
        with httpx.Client(base_url=url, timeout=600) as client:
            for j in range(count):
                t0 = time.perf_counter()
                job = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": steps, "seed": index * 1000 + j})
                done = wait(client, job.json()["id"])
                assert done["state"] == "done", done
                with lock:
                    latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n, i)) for i, n in enumerate(per_client)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"clients": clients, "jobs": jobs, "seconds": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed, 3),
            "median_latency_s": round(latencies[len(latencies) // 2], 3)}


def cancel_latency(url: str, repeats: int) -> dict:
    """Submit a 150-step job, cancel it once it has run 3 steps, time until the store says cancelled."""
    times, steps_left = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(repeats):
            job = client.post("/v1/jobs", json={"prompt": PROMPT, "steps": 150, "seed": i}).json()
            while client.get(job["url"]).json()["step"] < 3:
                time.sleep(0.005)
            t0 = time.perf_counter()
            client.post(f"{job['url']}/cancel")
            final = wait(client, job["id"], poll=0.002)
            times.append(time.perf_counter() - t0)
            steps_left.append(150 - final["step"])
    times.sort()
    return {"repeats": repeats, "median_s": round(times[len(times) // 2], 4), "max_s": round(times[-1], 4)}


def restart(data: Path, threads: int, queued: int, steps: int) -> dict:
    """Queue jobs, kill -9 the server while one runs, start it again: count what comes back and finishes."""
    port = free_port()
    process = start(data, port, threads, [])
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=600) as client:
        ids = [client.post("/v1/jobs", json={"prompt": PROMPT, "steps": steps, "seed": i}).json()["id"]
               for i in range(queued)]
        while client.get(f"/v1/jobs/{ids[0]}").json()["state"] != "running":
            time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    t0 = time.perf_counter()
    port = free_port()
    process = start(data, port, threads, [])
    up = time.perf_counter() - t0
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            states = [wait(client, i)["state"] for i in ids]
        drained = time.perf_counter() - t0
    finally:
        process.terminate()
        process.wait()
    return {"jobs": queued, "done_after_restart": states.count("done"), "lost": queued - len(states),
            "restart_to_listening_s": round(up, 3), "restart_to_all_done_s": round(drained, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server-flag", action="append", default=[], help="extra flag for sdxl serve (repeat)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        process = start(Path(tmp) / "data", port, args.threads, args.server_flag)
        url = f"http://127.0.0.1:{port}"
        try:
            throughput(url, 2, 1, args.steps)  # warm-up: model load, preview projection
            results = {
                "one_client": throughput(url, args.jobs, 1, args.steps),
                "concurrent": throughput(url, args.jobs, args.clients, args.steps),
                "cancel_to_stop": cancel_latency(url, 5),
            }
        finally:
            process.terminate()
            process.wait()
        results["kill_and_restart"] = restart(Path(tmp) / "restart", args.threads, 6, args.steps)

    import torch

    report = {
        "benchmark": "bench_server",
        "model": "demo (128x128)",
        "steps": args.steps,
        "sampler": "model default (Euler)",
        "server_flags": args.server_flag,
        "torch_threads": args.threads,
        "client_poll_s": POLL_S,
        "device": f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
