"""Data-parallel trials: one Tune trial spanning k workers through Ray Train and torch.distributed.

A study asks for it with ``resources: {workers: k, cpu: c, gpu: g}`` (c and g per worker; ``workers: [1, 2]``
sweeps it). The trial's Tune actor (:class:`~sqn_ray.study.trainable.StudyTrainable`) then runs a
:class:`ray.train.torch.TorchTrainer` of k workers, which Ray Train places together (one placement group: all k
or none) and joins in a torch.distributed process group (gloo on CPUs, NCCL on GPUs). On every worker:

1. the problem's shard is built there, from the worker's own copy of the data (``get_problem(..., shard=(rank,
   k))``: the MNIST problems read only their rows from the local cache; nothing travels through the driver);
2. its oracle is wrapped in :class:`~sqn_ray.collective.AllReduceOracle`: one ``all_reduce`` per oracle call
   sums the shares, weighted n_k / n, of the loss and gradient, the m HVPs (Option II) or the m gradients
   (Option I);
3. the optimizer runs **replicated**: every rank runs the same :class:`~sqn_ray.study.execution.TrialExecution`
   with the same seed, so every rank draws the same directions and, given the same all-reduced values, holds
   the same iterate; training accuracy is all-reduced the same way; rank 0 alone decides what only it can (the
   wall-time budget, a stop from Tune) and broadcasts it once per iteration, so all replicas stop together.

Rank 0 alone keeps the rows and evaluates the held-out metrics; it sends the chunks, the trial's info and its
final record to the trial actor through a Ray queue, and reads the scheduler's permits and stop requests
from another. To Tune, the Parquet files, resume and the trial checkpoints the trial looks like any other:
its rows are rank 0's. What a data-parallel trial adds to its info (trials.parquet): ``comm_collectives``,
``comm_values`` (floats all-reduced per rank), ``comm_seconds`` (time inside the collectives) and
``replicas_agree`` (every rank ended on the same bits of the iterate).

Resources: the trial's own actor takes no CPU or GPU (:data:`HEAD_BUNDLE`); the k workers' ``cpu``/``gpu``
each are Ray Train's placement group. Ray starts the group when all k bundles fit, so on a
small machine a k-worker trial waits until the 1-worker trials running beside it leave room.
"""
from __future__ import annotations

import queue as _queue
import shutil
import tempfile
import threading
import time
from typing import Any

__all__ = ["run_data_parallel", "HEAD_BUNDLE", "trial_resources"]

#: what a data-parallel trial's own (Tune) actor reserves: it only relays chunks between rank 0 and Tune, and
#: any CPU share it held would be missing from its workers' placement group (k workers of 1 CPU on k CPUs
#: would never start); one byte of Ray's memory resource gives Tune a bundle to place it in
HEAD_BUNDLE = {"memory": 1}
#: seconds rank 0 lets pass between two looks at the stop requests (each is one call to a queue actor)
_POLL_SECONDS = 0.5
#: seconds a stopped trial waits for its worker group to wind down before it gives up on it
_STOP_GRACE = 60.0


def trial_resources(resources: dict, workers: int):
    """Tune's resource request of one trial: the study's ``{"cpu", "gpu"}`` for a single-process trial; for a
    data-parallel one, :data:`HEAD_BUNDLE` for its actor (the workers' resources are Ray Train's to reserve)."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    if workers <= 1:
        return PlacementGroupFactory([{"CPU": resources["cpu"], "GPU": resources["gpu"]}])
    return PlacementGroupFactory([dict(HEAD_BUNDLE)])


# ------------------------------------------------------------------------------------------ the trial side
def run_data_parallel(settings: dict, cell: dict, *, workers: int, channel, resume: dict | None,
                      recipes: dict | None, trial_id: str, started: float) -> dict[str, Any]:
    """Run one trial on ``workers`` Ray Train workers; chunks and info reach ``channel`` (the trial actor's) as
    rank 0 sends them. Returns the trial's final record; a failure of any worker becomes a ``failed`` one."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    # queue actors take no CPU: they are created inside the trial's placement group, which holds none
    up, down = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    gpu = float(settings.get("gpus") or 0)
    per_worker = {"CPU": float(settings["cpus"]), **({"GPU": gpu} if gpu > 0 else {})}
    storage = tempfile.mkdtemp(prefix="sqn-ray-train-")
    config = {"settings": settings, "cell": cell, "resume": resume, "recipes": recipes or {}, "up": up,
              "down": down, "started": started}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker),
        run_config=RunConfig(name=f"{trial_id}-workers", storage_path=storage,
                             failure_config=FailureConfig(max_failures=0)))
    outcome: dict[str, Any] = {}

    def fit():
        try:
            trainer.fit()
        except BaseException as e:  # noqa: BLE001 - reported as the trial's failure below
            outcome["error"] = e

    fitting = threading.Thread(target=fit, name="sqn-ray-train-fit", daemon=True)
    fitting.start()
    final = None
    halted_at = None
    try:
        while True:
            t = channel.t
            while t._permit.acquire(blocking=False):  # Tune's step() let the trial go on: tell rank 0
                down.put("go")
            if t._halt.is_set() and halted_at is None:
                halted_at = time.monotonic()
                down.put("halt")
            try:
                item = up.get(timeout=0.2)
            except _queue.Empty:
                item = None
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty subclasses queue.Empty; anything else: ended
                item = None
            if item is not None:
                if "final" in item:
                    final = item["final"]
                else:
                    channel.put(item)
                continue
            if not fitting.is_alive():
                try:
                    if up.empty():
                        break
                except Exception:  # noqa: BLE001 - the queue is gone with the run: nothing more can come
                    break
            if halted_at is not None and time.monotonic() - halted_at > _STOP_GRACE:
                break  # the group never started (or hangs): the trial is stopped all the same
        fitting.join(timeout=1.0)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    error = outcome.get("error")
    if final is None:
        final = {"status": "budget" if halted_at is not None and error is None else "failed",
                 "stop_reason": "stopped" if halted_at is not None and error is None else "error",
                 "error": None, "trial_time": time.time() - started, "finished_at": time.time(), "info": {}}
        if final["status"] == "failed":
            final["error"] = _error_text(error) if error is not None else (
                f"the {workers} workers of the trial ended without a result")
    elif error is not None:
        # Rank 0 failing in a collective is most often the echo of another rank's failure (gloo: "Connection
        # closed by peer"): the group's error, which names each failed rank's own exception, comes first
        rank0 = final.get("error") if final.get("status") == "failed" else None
        failed = getattr(error, "worker_failures", None) or {}
        echo = rank0 and 0 not in failed  # rank 0's own failure is already among the group's
        text = _error_text(error) + (f"\nrank 0 (which sends the record): {rank0[-2000:]}" if echo else "")
        final.update(status="failed", stop_reason="error", error=text)
    # rank 0 timed its own run only: the trial's time is the whole of it, its worker group's start and end included
    final["trial_time"] = time.time() - started
    return final


def _error_text(e: BaseException) -> str:
    """The worker group's error: each failed rank's own exception (Ray Train's ``worker_failures``), the start
    of each kept, where the root cause is; any other error of the group as it reads."""
    failures = getattr(e, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        ranks = "\n".join(f"rank {rank}: {type(x).__name__}: {x}"[:1500] for rank, x in sorted(failures.items()))
        return f"data-parallel workers: {type(e).__name__}, {len(failures)} failed:\n{ranks}"[:6000]
    return f"data-parallel workers: {type(e).__name__}: {e}"[-4000:]


# ------------------------------------------------------------------------------------------ the worker side
class _RemoteChannel:
    """Rank 0's end of the trial: chunks up to the trial actor, permits and stop requests down from it."""

    def __init__(self, up, down, report_interval: float):
        self.up, self.down = up, down
        self.report_interval = float(report_interval)
        self._deadline = time.monotonic() + self.report_interval
        self._permits = 0
        self._halted = False
        self._next_poll = 0.0

    def put(self, item: dict) -> None:
        self.up.put(item)

    def deadline(self) -> float:
        return self._deadline

    def rearm(self) -> None:
        self._deadline = time.monotonic() + self.report_interval

    def _take(self, message: str) -> None:
        if message == "go":
            self._permits += 1
        elif message == "halt":
            self._halted = True

    def _drain(self) -> None:
        while True:
            try:
                self._take(self.down.get_nowait())
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty: nothing more
                return

    def wait_permit(self) -> bool:
        self._drain()
        while self._permits == 0 and not self._halted:
            try:
                self._take(self.down.get(timeout=0.2))
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty: keep waiting
                pass
        if self._permits:
            self._permits -= 1
        self.rearm()
        return self._halted

    def halted(self) -> bool:
        now = time.monotonic()
        if now >= self._next_poll:  # one queue call at most every _POLL_SECONDS, not one per iteration
            self._next_poll = now + _POLL_SECONDS
            self._drain()
        return self._halted


class _Collective:
    """The cross-rank operations :class:`~sqn_ray.study.execution.TrialExecution` needs on a data-parallel rank."""

    def __init__(self, device):
        self.device = device
        self.oracle = None
        self.n_total = None

    def bind(self, oracle) -> None:
        self.oracle, self.n_total = oracle, oracle.n_total

    def mean(self, value: float) -> float:
        return self.oracle.mean(value)

    def agree(self, stop: bool) -> bool:
        from ..collective import agree_on_stop

        return agree_on_stop(stop, device=self.device)

    def report(self, x) -> dict:
        from ..collective import replicas_agree

        comm = self.oracle.comm
        return {"replicas_agree": replicas_agree(x), "comm_collectives": comm.collectives,
                "comm_values": comm.values, "comm_seconds": comm.seconds}


class _ShardedProblem:
    """A problem whose oracle is the all-reduced one: F over every worker's rows; accuracy is the shard's (the
    execution all-reduces it), the held-out metrics the whole test set's (rank 0 evaluates them)."""

    def __init__(self, shard, oracle):
        self.name, self.dim, self.dtype, self.device = shard.name, shard.dim, shard.dtype, shard.device
        self.n_samples = oracle.n_total
        self.oracle = oracle
        self.init, self.accuracy = shard.init, shard.accuracy
        self.target_accuracy = shard.target_accuracy
        self.metrics = getattr(shard, "metrics", None)
        self.description = shard.description


def _worker_loop(config: dict) -> None:
    """One rank of a data-parallel trial (Ray Train's ``train_loop_per_worker``)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from ..collective import AllReduceOracle
    from ..problems import get_problem
    from .execution import TrialExecution, host_info

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    s, cell = config["settings"], config["cell"]
    threads = max(1, int(s["cpus"]))
    torch.set_num_threads(threads)

    def device_of(gpu_ids) -> str:
        want = s["device"]
        if want != "cpu" and gpu_ids and torch.cuda.is_available():
            return str(ray.train.torch.get_device())
        if want == "cuda":
            raise RuntimeError(f"device: cuda, but worker {rank} was given GPU ids {gpu_ids} and torch sees "
                               f"{torch.cuda.device_count()} CUDA device(s)")
        return "cpu"

    info = host_info(threads, device_of, config["started"])
    device = torch.device(info["device"])
    if (device.type == "cuda") != (dist.get_backend() == "nccl"):
        raise RuntimeError(f"worker {rank}: its device is {device} but the process group's backend is "
                           f"{dist.get_backend()} (gloo works on CPU tensors, NCCL on CUDA ones)")
    channel = _RemoteChannel(config["up"], config["down"], s["report_interval"]) if rank == 0 else None
    collective = _Collective(device)

    def prepare(execution: TrialExecution):
        execution.info.update(info, workers=world)
        dtype = getattr(torch, s["dtype"])
        shard = get_problem(cell["problem"], dtype=dtype, device=device, problems=config["recipes"],
                            shard=(rank, world))
        rows = torch.tensor([float(shard.n_samples)], dtype=torch.float64, device=device)
        dist.all_reduce(rows)
        oracle = AllReduceOracle(shard.oracle, int(shard.n_samples), int(rows[0]))
        collective.bind(oracle)
        return _ShardedProblem(shard, oracle)

    execution = TrialExecution(s, cell, channel=channel, collective=collective, resume=config["resume"])
    final = execution.run(prepare)
    if channel is not None:
        channel.put({"final": final})
    if final.get("status") == "failed":
        # rank 0 has sent the record; the failed rank cannot reach the collectives any more, so the others
        # would wait in one for ever: an error of the worker group ends them all (Ray Train stops the group)
        raise RuntimeError(final.get("error") or "failed")
