"""NSR under data parallelism: synchronised centroids equal a single process on the concatenated batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nsr import NeuronSteadiness

WORLD, BATCHES, LOCAL = 2, 4, 6


def _batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(WORLD * LOCAL, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (WORLD * LOCAL,), generator=g)) for _ in range(BATCHES)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    reg = NeuronSteadiness(3, queue_length=3, weight=0.7)  # sync=None: on, because a group is initialised
    values, grads = [], []
    for o, y in _batches():
        local = o[rank * LOCAL : (rank + 1) * LOCAL].clone().requires_grad_()
        penalty = reg(local, y[rank * LOCAL : (rank + 1) * LOCAL])
        penalty.backward()
        values.append(float(penalty))
        grads.append(local.grad)
    torch.save({"values": values, "grads": grads, "queue": reg.queue}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_synchronised_penalty_and_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = NeuronSteadiness(3, queue_length=3, weight=0.7)
    for step, (o, y) in enumerate(_batches()):
        o = o.clone().requires_grad_()
        value = single(o, y)
        value.backward()
        # equal local batches: the mean of the ranks' penalties is the global penalty, and each rank's
        # gradient divided by the world size (DDP averages) is the slice of the global gradient
        assert sum(r["values"][step] for r in ranks) / WORLD == pytest.approx(float(value), rel=1e-6)  # the queue accumulates in float32
        for r in range(WORLD):
            assert torch.allclose(ranks[r]["grads"][step] / WORLD, o.grad[r * LOCAL : (r + 1) * LOCAL], atol=1e-7)
    assert torch.allclose(ranks[0]["queue"], ranks[1]["queue"]) and torch.allclose(ranks[0]["queue"], single.queue.float())


def test_sync_true_without_group_is_an_error():
    with pytest.raises(RuntimeError, match="process group"):
        NeuronSteadiness(3, sync=True)(torch.rand(4, 2), torch.tensor([0, 1, 2, 0]))


@pytest.mark.distributed
def test_training_entry_point_under_torchrun():
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "nsr.distributed", "--dataset", "digits",
           "--model", "mlp", "--depth", "3", "--epochs", "2", "--batch-size", "32", "--lr", "0.1", "--nsr-weight", "1.0",
           "--nsr-layer", "layer3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2 and result["ranks_agree"] and result["test_acc"] > 0.5
