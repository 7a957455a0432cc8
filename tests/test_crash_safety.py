"""Crash safety: kill -9 mid-training or mid-checkpoint-write, and Ctrl-C, never lose more than one checkpoint
interval, never leave an unreadable checkpoint, and --resume reproduces the uninterrupted run bit for bit.
Also: a pickle planted in a checkpoint is never executed.

The training runs are real processes (tests/tiny_run.py: Trainer + save_checkpoint on a 2-stage 8 -> 16 px
cascade; tests/tiny_run_gated.py, the same run paced iteration by iteration from here; train_small.py for its
own Ctrl-C handler), killed with SIGKILL / SIGINT from here.
"""
import json
import os
import pickle
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from minimagen.cascade import Cascade
from minimagen.checkpoint import CheckpointError
from minimagen.training import Trainer, TrainConfig, latest_checkpoint
import tiny_run
from tiny_run import tiny_config

ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 9
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL / SIGINT semantics are POSIX")


class Run:
    """A training subprocess whose stdout lines arrive on a queue (so waiting for one can time out)."""

    def __init__(self, *args: str, script: str = "tests/tiny_run.py"):
        gated = script == "tests/tiny_run_gated.py"  # it reads "go" lines from our stdin
        self.proc = subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=ENV, text=True,
                                     stdin=subprocess.PIPE if gated else None,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                raise AssertionError(f"process ended before printing {prefix!r}:\n" + "\n".join(self.seen[-30:]))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def go(self) -> None:
        """Let a tiny_run_gated.py process start its next iteration."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> int:
        rc = self.proc.wait(timeout=timeout)  # also reaps it: a killed writer's PID is then really gone
        if self.proc.stdin:
            self.proc.stdin.close()
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return rc

    def last_iteration(self) -> int:
        done = [int(line.split()[1]) for line in self.seen if line.startswith("iteration ")]
        return done[-1] if done else 0


def start_run(out: Path, *args: str) -> Run:
    return Run(str(out), "--iterations", str(ITERATIONS), *args)


def iterations_in(checkpoint: Path) -> int:
    """Load a step-* directory the way a resume does (it must be readable) and return its iteration count."""
    trainer = Trainer(Cascade(tiny_config()), TrainConfig(learning_rate=1e-3, warmup_steps=2, seed=3))
    trainer.load_checkpoint(checkpoint)
    Cascade.from_pretrained(checkpoint / "cascade")  # and the weights alone, as sampling would
    return trainer.steps[0]


def assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = Cascade.from_pretrained(a / "cascade"), Cascade.from_pretrained(b / "cascade")
    for (name, x), (_, y) in zip(ca.state_dict().items(), cb.state_dict().items()):
        assert torch.equal(x, y), name
    for x, y in zip(ca.ema_unets.parameters(), cb.ema_unets.parameters()):
        assert torch.equal(x, y)


def train_here(out: Path, resume: bool) -> Path:
    """tiny_run.train in this process (one thread, like the subprocesses; the global RNG left as it was)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            return tiny_run.train(out, ITERATIONS, checkpoint_every=3, resume=resume)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The final checkpoint of an uninterrupted run."""
    return train_here(tmp_path_factory.mktemp("reference"), resume=False)


def resume_to_the_end(out: Path) -> Path:
    """What `tiny_run.py OUT --resume` does, run here to save a process start."""
    return train_here(out, resume=True)


def test_kill_9_during_training_loses_at_most_one_interval_and_resume_matches_uninterrupted(tmp_path, reference):
    run = start_run(tmp_path, "--checkpoint-every", "3")
    run.wait_for("iteration 4")  # the checkpoint of iteration 3 exists
    run.proc.kill()
    run.finish()
    saved = iterations_in(latest_checkpoint(tmp_path / "checkpoints"))
    assert 3 <= saved <= run.last_iteration()
    assert run.last_iteration() - saved <= 3  # at most one checkpoint interval of work lost
    assert_same_weights(resume_to_the_end(tmp_path), reference)


def test_kill_9_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference):
    run = start_run(tmp_path, "--checkpoint-every", "3", "--pause-in-save-at", "6")
    deadline = time.monotonic() + 60
    while not (tmp_path / "paused-in-save").exists():  # weights of step-00000012 written, its state not yet
        assert run.proc.poll() is None and time.monotonic() < deadline, run.seen
        time.sleep(0.05)
    run.proc.kill()
    run.finish()
    root = tmp_path / "checkpoints"
    half_written = list(root.glob(".step-00000012.tmp-*"))
    assert len(half_written) == 1 and (half_written[0] / "cascade" / "config.json").exists()
    assert latest_checkpoint(root).name == "step-00000006"  # the half-written one is never listed
    assert iterations_in(latest_checkpoint(root)) == 3
    final = resume_to_the_end(tmp_path)
    assert not list(root.glob(".step-*.tmp-*"))  # the dead writer's leftovers are cleaned up by the next save
    assert_same_weights(final, reference)


def test_kill_9_at_random_moments_never_leaves_an_unreadable_checkpoint(tmp_path, reference):
    """Each attempt lets the run do one iteration + checkpoint (timing them), then starts the next one and
    kills the process at a random fraction of that measured time: inside the iteration, its checkpoint write
    or the wait after it. The gated run cannot get ahead of us, so a busy machine changes where a kill lands,
    never whether it lands in a live run (killed runs use at most 2 x 3 of the 9 iterations)."""
    rng = random.Random(0)
    saved = 0
    for attempt in range(3):
        run = Run(str(tmp_path), "--iterations", str(ITERATIONS), "--checkpoint-every", "1",
                  *(["--resume"] if saved else []), script="tests/tiny_run_gated.py")
        run.wait_for("waiting for go")  # started (and resumed)
        run.go()
        started = time.monotonic()
        run.wait_for("waiting for go")
        cycle = time.monotonic() - started  # iteration + checkpoint at this machine's current speed
        run.go()  # the next iteration; its checkpoint follows, then the process waits for another "go"
        time.sleep(rng.uniform(0.0, 1.2 * cycle))
        run.proc.kill()
        run.finish()
        latest = latest_checkpoint(tmp_path / "checkpoints")
        now = iterations_in(latest) if latest else 0  # raises if the newest checkpoint is unreadable
        assert now >= saved and run.last_iteration() - now <= 1  # with a checkpoint per iteration, <= 1 lost
        saved = now
    assert_same_weights(resume_to_the_end(tmp_path), reference)


def test_ctrl_c_finishes_the_iteration_saves_and_exits_130(tmp_path, reference):
    run = start_run(tmp_path, "--checkpoint-every", "0")
    run.wait_for("iteration 2")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130
    assert any(line.startswith("interrupted: saved") for line in run.seen)
    assert iterations_in(latest_checkpoint(tmp_path / "checkpoints")) == run.last_iteration()  # nothing lost
    assert_same_weights(resume_to_the_end(tmp_path), reference)


def test_train_small_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    """train_small's own SIGINT handler (the preset 'ci', made quick with batch 2 and a checkpoint every step)."""
    data = tmp_path / "data"  # two captioned images instead of the preset's 400 shapes: a quicker start
    data.mkdir()
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), color).save(data / f"{name}.png")
        (data / f"{name}.txt").write_text(f"a {name} square")
    out = tmp_path / "run"
    args = ["--preset", "ci", "--data", str(data), "--steps", "500", "2", "2", "--batch-size", "2",
            "--checkpoint-every", "1", "--out", str(out), "--no-progress"]
    run = Run(*args, script="train_small.py")
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-00000001").exists():  # training is under way
        assert run.proc.poll() is None and time.monotonic() < deadline, run.seen
        time.sleep(0.1)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.seen
    text = "\n".join(run.seen)
    assert "Traceback" not in text
    assert "interrupted: saved" in text and f"--out {out}" in text and text.rstrip().endswith("--resume")
    latest = latest_checkpoint(out / "checkpoints")
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["steps"][0] >= 2 and state["steps"][1:] == [0, 0]  # the step under way when Ctrl-C came, at least
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses["0"]) == state["steps"][0]  # the loss curve matches the saved step
    Cascade.from_pretrained(latest / "cascade")


# ------------------------------------------------------------------ safe loading (no pickle is ever run)
class Payload:
    """Unpickling this creates the marker file: a stand-in for any code a tampered pickle would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickles_are_never_opened(tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload works when something does unpickle it
    assert marker.exists()
    marker.unlink()

    cascade = Cascade(tiny_config())
    trainer = Trainer(cascade)
    ckpt = trainer.save_checkpoint(tmp_path / "ckpts")
    for planted in (ckpt / "cascade" / "pytorch_model.bin", ckpt / "cascade" / "stage0.pt", ckpt / "pytorch_model.bin"):
        planted.write_bytes(pickle.dumps(Payload(marker)))
    Cascade.from_pretrained(ckpt / "cascade")
    Trainer(Cascade(tiny_config())).load_checkpoint(ckpt)
    assert not marker.exists()


def test_tampered_optimizer_file_is_refused_with_a_checkpoint_error_and_nothing_changes(tmp_path):
    marker = tmp_path / "PWNED"
    torch.manual_seed(0)
    trainer = Trainer(Cascade(tiny_config()))
    ckpt = trainer.save_checkpoint(tmp_path / "ckpts")
    torch.save({"optimizer": Payload(marker), "scheduler": {}}, ckpt / "optimizer1.pt")

    torch.manual_seed(1)  # a different initialisation, to see that load_checkpoint leaves it alone
    victim = Trainer(Cascade(tiny_config()))
    before = {k: v.clone() for k, v in victim.cascade.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"optimizer1\.pt was refused.*Nothing in it was run"):
        victim.load_checkpoint(ckpt)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in victim.cascade.state_dict().items())
    assert victim.steps == [0, 0]
    torch.load(ckpt / "optimizer1.pt", weights_only=False)  # proof the file was dangerous: full unpickling runs it
    assert marker.exists()
