"""tests/tiny_run.py paced by its parent: for tests that kill it at a random moment of a known iteration.

    python tests/tiny_run_gated.py OUT --iterations 9 --checkpoint-every 1 [--resume]

The same training as tiny_run.py (same cascade, data, seeds and thread count: checkpoints are bit-identical),
except that before each iteration it prints "waiting for go", reads one line from stdin and starts the
iteration only on "go"; any other line, or the end of input, stops it (it then saves a checkpoint, as after
Ctrl-C). So it can never run
ahead of its parent, however busy the machine: after sending "go" for iteration k + 1, a kill at any delay
lands inside iteration k + 1, inside the checkpoint write after it, or in the wait for the next "go" - never
after the run has finished, which a kill timed by the wall clock alone could not promise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import tiny_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as tiny_run.py: the same thread count in every run, so runs are bit-comparable

    def no_go() -> bool:  # tiny_run.train's stop_requested, asked before every iteration
        print("waiting for go", flush=True)  # the previous iteration and its checkpoint are done
        return sys.stdin.readline().strip() != "go"

    tiny_run.train(args.out, args.iterations, args.checkpoint_every, args.resume, stop_requested=no_go)


if __name__ == "__main__":
    main()
