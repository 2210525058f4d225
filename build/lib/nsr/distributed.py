"""Image-classification training entry point that runs alone or under ``torchrun`` (DistributedDataParallel).

    python -m nsr.distributed --dataset mnist --model mlp --depth 4 --epochs 1 --nsr-weight 7.487 --nsr-layer layer4
    torchrun --nproc_per_node 2 -m nsr.distributed --dataset digits --model mlp --depth 3 --epochs 2 --nsr-weight 1 --nsr-layer layer3

Every rank builds the model from the same seed; DDP averages the gradients and NSR (``sync`` on by default
when a process group is initialised) all-reduces each batch's per-class sums and counts, so every rank uses the
centroids of the global batch. Backend: NCCL on CUDA, gloo on CPU. Rank 0 prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .experiments import build_model, load_data
from .train import TrainConfig, train_classifier


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp", choices=["mlp", "resnet18", "vgg19", "lenet"])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--nsr-weight", type=float, default=0.0)
    parser.add_argument("--nsr-layer", action="append", default=[])
    parser.add_argument("--queue-length", type=int, default=5)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = "cpu"
    if world > 1:
        use_cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = "cuda"
    spec = {"dataset": args.dataset, "model": args.model, "depth": args.depth, "width": args.width, "train_subset": args.train_subset}
    data = load_data(spec)
    torch.manual_seed(args.seed)
    model = build_model(spec, data).to(device)
    if world > 1:
        model = DistributedDataParallel(model)
    cfg = TrainConfig(
        epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, nsr_weight=args.nsr_weight,
        nsr_layers=tuple(args.nsr_layer), queue_length=args.queue_length, seed=args.seed, progress=False, device=device,
    )
    result = train_classifier(model, data, cfg)
    out = {**result.metrics(), "world_size": world}
    rank = dist.get_rank() if world > 1 else 0
    if world > 1:
        # every rank must hold the same weights after training
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        out["ranks_agree"] = all(torch.equal(gathered[0], g) for g in gathered)
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
