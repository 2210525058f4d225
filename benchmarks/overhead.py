"""Training-step time with and without NSR, side by side in one process (appendix E, Table 6).

    python benchmarks/overhead.py [--rounds 15] [--steps 20] [--threads 1] [--only mlp4 resnet18 sage2]

Prints the median step time of each variant, their ratio (median and interquartile range over rounds), the A/A
control's ratio (two vanilla builds: the noise floor) and the paper's ratio (see ``nsr.overhead``).
"""

from __future__ import annotations

import argparse

import torch

from nsr.overhead import overhead_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=["mlp4", "resnet18", "sage2"])
    parser.add_argument("--json", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = overhead_table(args.only, args.rounds, args.steps, args.resnet_batch)
    print(table[["model", "vanilla step (ms)", "NSR step (ms)", "ratio", "ratio IQR", "A/A ratio", "paper ratio"]].to_string(index=False, float_format="%.3f"))
    if args.json:
        table.to_json(args.json, orient="records", indent=1)


if __name__ == "__main__":
    main()
