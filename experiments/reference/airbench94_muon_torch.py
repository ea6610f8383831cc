#!/usr/bin/env python3
"""The airbench94_muon recipe in plain PyTorch (CPU, float32), for a reference check of muonlab.

What it is: an independent re-implementation of Keller Jordan's airbench94_muon.py
(github.com/KellerJordan/cifar10-airbench; 94.01% mean CIFAR-10 test accuracy over 200 runs on an
A100 with torch 2.4.1). It exists to check muonlab's port (configs/study/cifar10_airbench94_muon.yaml,
91.05% on our data, results in experiments/results/study-data/airbench94/) on the SAME data: our
CIFAR-10 copy in ../shared/data/cifar-10-batches-bin is rebuilt from lossy JPEG files (see
PROVENANCE.txt there). If this script also lands near 91%, the gap to 94.01% is the data, not the
port. PyTorch is used here for this check only; it is never part of muonlab.

The recipe: 2x2 patch-whitening conv (24 filters: the eigenvectors of the uncentred covariance of the
2x2 patches of the first 5000 normalised training images, scaled by 1/sqrt(eigenvalue + 5e-4), and
their negations), frozen; its bias trained for the first 3 epochs with its own linear decay; GELU;
three groups (widths 64/256/256) of conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU;
maxpool3; linear head without bias, initialised at std 1, logits divided by 256. Batch norm with
running-statistics momentum 0.6 in airbench's sense (PyTorch momentum 0.4), eps 1e-12, weight frozen
at 1. Conv filters start with a dirac (identity) on their first in_channels outputs. Conv filters are
trained by Muon (lr 0.24, momentum 0.6, Nesterov, 3 Newton-Schulz steps with Keller's quintic
coefficients, filter renormalised to Frobenius norm sqrt(out_channels) before each update); the
whitening bias, batch-norm biases and head by Nesterov SGD (momentum 0.85; lr 0.053 for the biases,
0.67 for the head; weight decay 2e-6 * batch / lr so that lr * wd = 0.004 per step) on the loss
SUMMED over the batch. Label smoothing 0.2, batch 2000, 8 epochs (200 steps), all rates decaying
linearly to 0 (the whitening bias over its own 75 steps). Augmentation: each image flipped once at
random, and the whole set flipped every other epoch ("alternating flip"); random translation of up to
2 pixels with reflect padding. Test-time augmentation level 2 (6 views: identity/mirror, times
no shift / the two diagonal one-pixel shifts, weighted 1/2 : 1/4 : 1/4).

Run (from the repository root). One thread took 31-36 s of wall time a step (about 22 s of CPU) at
nice 19 beside two other jobs on two cores, so the 200 steps take 1-2 hours plus the final evaluation
(6 forward passes over the test set, not timed yet). It runs in pieces: rerunning the same command
resumes from <out>/checkpoint.pt:
    nice -n 19 /usr/bin/python3 experiments/reference/airbench94_muon_torch.py \\
        --out runs/airbench94-torch-seed0 --seed 0 --threads 1 --max-minutes 100
    # ...repeat the same command (in later sessions) until it prints the summary.
    # Alternatively stop at a given step with --steps N (e.g. 50, then 100, ...), or send SIGTERM /
    # Ctrl-C (e.g. `timeout 2h ...`): it finishes the step in flight, checkpoints and exits.
Outputs in --out: metrics.jsonl (mean per-sample train loss over each 5-step window, and the last
batch's train accuracy at the end of each epoch), checkpoint.pt (written every --checkpoint-every
steps and whenever it stops), summary.json at the end ({"val_acc": TTA level 2, "val_acc_no_tta",
"train_seconds": accumulated over all pieces, training steps and whitening only}). All files are
written atomically (temporary file + rename). Resume with the same --threads for a bit-identical run
(other thread counts change float summation order only).

Deviations from the original (the math is otherwise the same):
  - Device and precision: CPU, float32 everywhere. The original keeps images in fp16 and
    channels_last, runs the network in fp16 with batch norm in fp32, Newton-Schulz in bf16 (so the
    Muon update and the renormalisation of fp16 filters are low-precision), uses fused SGD,
    cudnn.benchmark and torch.compile(mode="max-autotune"); all of that is dropped. The whitening
    covariance is computed from float32 images (the original casts fp16 images to float).
  - Data: our .bin files (5 training batches, test_batch.bin; 1 label byte + 3072 CHW bytes per
    record) instead of torchvision's download. Same normalisation constants. Our test-set order
    differs from the official one, which does not matter for accuracy.
  - One run per invocation (--seed). The original first trains a "warmup" run on random labels (only
    to compile) and then 200 runs; neither applies here.
  - Randomness: the original draws initialisation, the one-time flip mask, the per-epoch shifts and
    the per-epoch permutation from the global CUDA generator in sequence. Here the initialisation
    comes from torch.manual_seed(seed), and the loader's randomness from generators seeded by
    (seed, epoch) (the flip mask from its own stream), so that a resumed run sees the same data
    order. Same distributions, different streams.
  - The loader keeps the pre-flipped, reflect-padded training set as uint8 and crops, converts and
    normalises per batch (the original normalises, flips and pads the whole set in fp16 once, and
    crops all of it at the start of each epoch). Padding, flipping and cropping commute with the per-channel normalisation, so the
    values are the same up to fp16 rounding.
  - The original evaluates the test set without TTA after every epoch (printed, no effect on
    training); here only with --eval-every-epoch. The final evaluation reuses the identity view for
    the no-TTA accuracy.
  - torch 1.13 (Debian's python3-torch) instead of 2.4.1; only `fused=True` is missing from SGD.
Not in the original: glibc is told to keep freed memory (keep_freed_memory; speed only). Debug
options: --steps N stops after global step N (checkpointing); --epochs E shortens the schedule (the
rates decay to 0 over E epochs; the whitening bias keeps its own 3-epoch decay, cut off at E).
"""

import argparse
import ctypes
import hashlib
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar-10-batches-bin")

# The recipe's constants (airbench94_muon.py).
BATCH_SIZE = 2000
EPOCHS = 8
WHITEN_BIAS_EPOCHS = 3
WHITEN_EXAMPLES = 5000
WHITEN_EPS = 5e-4
WIDTHS = (64, 256, 256)
BN_MOMENTUM = 0.6  # airbench's convention: weight of the old running statistic
BN_EPS = 1e-12
BIAS_LR = 0.053
HEAD_LR = 0.67
SGD_MOMENTUM = 0.85
WEIGHT_DECAY = 2e-6 * BATCH_SIZE  # lr * weight_decay per step, before the schedule
MUON_LR = 0.24
MUON_MOMENTUM = 0.6
NS_STEPS = 3
LABEL_SMOOTHING = 0.2
TRANSLATE = 2
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
LOG_EVERY = 5
RECORD_BYTES = 1 + 3 * 32 * 32


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def atomic_write(path, write):
    """Calls write(file object) on a temporary file next to `path`, then renames it over `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def read_cifar_bin(paths):
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from CIFAR-10 binary batch files."""
    records = []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD_BYTES:
            sys.exit(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records")
        records.append(raw.reshape(-1, RECORD_BYTES))
    records = np.concatenate(records)
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        sys.exit(f"labels out of range 0..9 in {paths}")
    images = torch.from_numpy(np.ascontiguousarray(records[:, 1:])).view(-1, 3, 32, 32)
    return images, labels


def normalize(images_u8):
    """uint8 NCHW -> float32, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images_u8.float() / 255 - mean) / std


# ----------------------------------------------------------------------------------------------
# Training data: randomness from (seed, stream) only, so any position can be re-entered exactly
# ----------------------------------------------------------------------------------------------

def seeded_generator(seed, stream):
    digest = hashlib.sha256(f"airbench94-torch/{seed}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def reflect_index(size, pad):
    """Source index of each position of a reflect-padded axis (edge not repeated, as F.pad)."""
    idx = torch.arange(-pad, size + pad)
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


class TrainLoader:
    """airbench's training loader: a random flip drawn once per image, the whole set flipped on odd
    epochs, a random shift of up to `translate` pixels per image per epoch (reflect padding), a
    fresh permutation per epoch, incomplete last batch dropped.

    State: (epoch, batch index). Epoch e's shifts and order come from seeded_generator(seed, e + 1),
    the flip mask from seeded_generator(seed, "flip")."""

    def __init__(self, images_u8, labels, batch_size, seed, translate):
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.translate = translate
        self.size = images_u8.shape[-1]
        self.batches_per_epoch = len(labels) // batch_size
        flip = torch.rand(len(labels), generator=seeded_generator(seed, "flip")) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images_u8.flip(-1), images_u8)
        idx = reflect_index(self.size, translate)
        self.padded = images[:, :, idx][:, :, :, idx].contiguous()
        self.epoch, self.index = 0, 0
        self._plan_epoch = None

    def _plan(self, epoch):
        if self._plan_epoch != epoch:
            gen = seeded_generator(self.seed, epoch + 1)
            n = len(self.labels)
            self._offsets = torch.randint(0, 2 * self.translate + 1, (n, 2), generator=gen)
            self._order = torch.randperm(n, generator=gen)
            self._plan_epoch = epoch
        return self._offsets, self._order

    def next_batch(self):
        """(inputs float32 NCHW, labels) of the current position; then advances."""
        offsets, order = self._plan(self.epoch)
        sel = order[self.index * self.batch_size:(self.index + 1) * self.batch_size]
        span = torch.arange(self.size)
        rows = (offsets[sel, 0:1] + span).view(-1, 1, self.size, 1)
        cols = (offsets[sel, 1:2] + span).view(-1, 1, 1, self.size)
        crops = self.padded[sel.view(-1, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1), rows, cols]
        if self.epoch % 2 == 1:
            crops = crops.flip(-1)
        batch = (normalize(crops), self.labels[sel])
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint loader seed {state['seed']} != {self.seed}")
        self.epoch, self.index = state["epoch"], state["index"]


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------

def frozen_weight_bn(channels):
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=1 - BN_MOMENTUM)
    bn.weight.requires_grad_(False)
    return bn


def conv3x3(cin, cout):
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)  # PyTorch's default init, then:
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:cin])  # the first `cin` filters pass their input through
    return conv


class Group(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.norm1 = conv3x3(cin, cout), frozen_weight_bn(cout)
        self.conv2, self.norm2 = conv3x3(cout, cout), frozen_weight_bn(cout)

    def forward(self, x):
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self):
        super().__init__()
        stem = 2 * 3 * 2 * 2
        self.whiten = nn.Conv2d(3, stem, 2, bias=True)  # weight set by init_whitening, frozen
        self.whiten.weight.requires_grad_(False)
        widths = (stem,) + WIDTHS
        self.groups = nn.ModuleList(Group(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(WIDTHS[-1], 10, bias=False)
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()

    @torch.no_grad()
    def init_whitening(self, images):
        """Filters from the eigendecomposition of the (uncentred) covariance of all 2x2 patches."""
        k = self.whiten.kernel_size
        patches = F.unfold(images, k)  # (N, 3*2*2, positions), flattened as the filters are
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS).view(-1, 1))
        filters = filters.view(-1, 3, *k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x, train_whiten_bias=True):
        bias = self.whiten.bias if train_whiten_bias else self.whiten.bias.detach()
        x = F.gelu(F.conv2d(x, self.whiten.weight, bias))
        for group in self.groups:
            x = group(x)
        x = F.max_pool2d(x, 3).flatten(1)
        return self.head(x) / x.shape[1]


# ----------------------------------------------------------------------------------------------
# Muon
# ----------------------------------------------------------------------------------------------

def newton_schulz(g, steps, eps=1e-7):
    """Approximate orthogonalisation (U S' V^T, S' roughly in [0.5, 1.5]) by Keller Jordan's
    quintic iteration, on the wide orientation of the matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum (optionally Nesterov) on the raw gradient; each filter is first rescaled to
    Frobenius norm sqrt(out_channels), then moved by -lr times the orthogonalised momentum."""

    def __init__(self, params, lr, momentum, nesterov=True, ns_steps=NS_STEPS):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(beta).add_(p.grad)
                direction = p.grad.add(buf, alpha=beta) if group["nesterov"] else buf
                p.mul_(math.sqrt(p.shape[0]) / p.norm())
                update = newton_schulz(direction.reshape(p.shape[0], -1), group["ns_steps"])
                p.add_(update.view_as(p), alpha=-group["lr"])


def make_optimizers(model):
    filters = [p for p in model.parameters() if p.dim() == 4 and p.requires_grad]
    norm_biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    sgd = torch.optim.SGD(
        [dict(params=[model.whiten.bias], lr=BIAS_LR, weight_decay=WEIGHT_DECAY / BIAS_LR),
         dict(params=norm_biases, lr=BIAS_LR, weight_decay=WEIGHT_DECAY / BIAS_LR),
         dict(params=[model.head.weight], lr=HEAD_LR, weight_decay=WEIGHT_DECAY / HEAD_LR)],
        lr=BIAS_LR, momentum=SGD_MOMENTUM, nesterov=True)
    muon = Muon(filters, lr=MUON_LR, momentum=MUON_MOMENTUM, nesterov=True)
    for opt in (sgd, muon):
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    n_trained = sum(p.numel() for g in sgd.param_groups + muon.param_groups for p in g["params"])
    assert n_trained == sum(p.numel() for p in model.parameters() if p.requires_grad)
    return sgd, muon


def set_learning_rates(sgd, muon, step, total_steps, whiten_bias_steps):
    """Linear decay to 0 for everything; the whitening bias (SGD group 0) over its own steps."""
    sgd.param_groups[0]["lr"] = sgd.param_groups[0]["base_lr"] * (1 - step / whiten_bias_steps)
    for group in sgd.param_groups[1:] + muon.param_groups:
        group["lr"] = group["base_lr"] * (1 - step / total_steps)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, images, labels, tta=True, chunk=BATCH_SIZE):
    """(accuracy with TTA level 2 or None, accuracy of the plain view), model in eval mode."""
    model.eval()
    correct_tta = correct_plain = 0
    for x, y in zip(images.split(chunk), labels.split(chunk)):
        plain = model(x)
        correct_plain += int((plain.argmax(1) == y).sum())
        if not tta:
            continue
        mirrored = 0.5 * (plain + model(x.flip(-1)))
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
        shifted = sum(0.5 * (model(s) + model(s.flip(-1))) for s in shifted) / len(shifted)
        correct_tta += int(((0.5 * mirrored + 0.5 * shifted).argmax(1) == y).sum())
    model.train()
    return (correct_tta / len(labels) if tta else None), correct_plain / len(labels)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(path, run):
    state = {key: run[key] for key in ("config", "step", "train_seconds", "metrics", "window")}
    state.update(model=run["model"].state_dict(), sgd=run["sgd"].state_dict(),
                 muon=run["muon"].state_dict(), loader=run["loader"].state_dict(), rng=rng_state())
    atomic_write(path, lambda f: torch.save(state, f))


def write_metrics(path, metrics):
    write_text(path, "".join(json.dumps(m) + "\n" for m in metrics))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def keep_freed_memory():
    """glibc hands every freed block over 32 MiB back to the kernel, so each step faults its
    activations (up to 0.5 GB a tensor) in again: about 40% of a step's time went to the kernel.
    Serving blocks up to 1 GiB from the heap and not trimming it avoids that (RSS stays near its
    peak, about 4.5 GB). Speed only; no effect on the numbers."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


class StopRequest:
    """SIGTERM / first Ctrl-C: finish the step in flight, checkpoint, exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once
        print(f"signal {signum}: stopping after this step", flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="CIFAR-10 binary batch folder")
    parser.add_argument("--out", required=True, help="run folder (resumed if it holds checkpoint.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--checkpoint-every", type=int, default=5, metavar="N",
                        help="steps between checkpoints (also written whenever it stops); 0: only then")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (with a checkpoint) after the first step that ends past this")
    parser.add_argument("--steps", type=int, default=None,
                        help="debugging: stop (with a checkpoint) after global step N")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="schedule length (recipe: 8)")
    parser.add_argument("--eval-every-epoch", action="store_true",
                        help="also log test accuracy without TTA after each epoch (slow on CPU)")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.seed < 0 or args.epochs < 1 or args.threads < 1 or args.checkpoint_every < 0:
        sys.exit("--seed, --checkpoint-every must be >= 0 and --epochs, --threads >= 1")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    wall_start = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    summary_path = os.path.join(args.out, "summary.json")
    if os.path.exists(summary_path):
        print(f"{summary_path} exists: this run is complete")
        print(open(summary_path).read())
        return

    train_files = [os.path.join(args.data, f"data_batch_{i}.bin") for i in range(1, 6)]
    train_images, train_labels = read_cifar_bin(train_files)
    test_images, test_labels = read_cifar_bin([os.path.join(args.data, "test_batch.bin")])
    test_inputs = normalize(test_images)
    loader = TrainLoader(train_images, train_labels, BATCH_SIZE, args.seed, TRANSLATE)
    total_steps = args.epochs * loader.batches_per_epoch
    whiten_bias_steps = WHITEN_BIAS_EPOCHS * loader.batches_per_epoch
    config = {"seed": args.seed, "epochs": args.epochs, "batch_size": BATCH_SIZE,
              "train_examples": len(train_labels), "total_steps": total_steps}

    torch.manual_seed(args.seed)
    model = AirbenchNet()
    sgd, muon = make_optimizers(model)
    run = {"config": config, "model": model, "sgd": sgd, "muon": muon, "loader": loader,
           "step": 0, "train_seconds": 0.0, "metrics": [], "window": [0.0, 0]}

    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path)
        if state["config"] != config:
            sys.exit(f"{ckpt_path} is for {state['config']}, not {config}")
        model.load_state_dict(state["model"])
        sgd.load_state_dict(state["sgd"])
        muon.load_state_dict(state["muon"])
        loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        for key in ("step", "train_seconds", "metrics", "window"):
            run[key] = state[key]
        write_metrics(metrics_path, run["metrics"])  # drop lines logged after the checkpoint
        print(f"resumed at step {run['step']}/{total_steps} "
              f"({run['train_seconds']:.0f} s of training so far)", flush=True)
    else:
        start = time.perf_counter()
        model.init_whitening(normalize(train_images[:WHITEN_EXAMPLES]))
        run["train_seconds"] += time.perf_counter() - start
        write_metrics(metrics_path, [])
        print(f"new run: {total_steps} steps of {BATCH_SIZE}, seed {args.seed}, "
              f"{args.threads} thread(s)", flush=True)
    expected = (run["step"] // loader.batches_per_epoch, run["step"] % loader.batches_per_epoch)
    assert (loader.epoch, loader.index) == expected, "loader position does not match the step"

    stop = StopRequest()
    model.train()
    last_saved = run["step"]
    while run["step"] < total_steps:
        if args.steps is not None and run["step"] >= args.steps:
            break
        if stop.requested:
            break
        if args.max_minutes is not None and time.monotonic() - wall_start > 60 * args.max_minutes:
            break
        step = run["step"]
        start = time.perf_counter()
        inputs, labels = loader.next_batch()
        logits = model(inputs, train_whiten_bias=step < whiten_bias_steps)
        loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING, reduction="sum")
        loss.backward()
        set_learning_rates(sgd, muon, step, total_steps, whiten_bias_steps)
        sgd.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        step_seconds = time.perf_counter() - start
        run["train_seconds"] += step_seconds
        run["step"] = step = step + 1

        run["window"][0] += loss.item() / len(labels)
        run["window"][1] += 1
        print(f"step {step}/{total_steps}  loss {loss.item() / len(labels):.4f}  "
              f"{step_seconds:.1f} s", flush=True)
        if step % LOG_EVERY == 0 or step == total_steps:
            run["metrics"].append({"step": step, "epoch": step / loader.batches_per_epoch,
                                   "train_loss": run["window"][0] / run["window"][1],
                                   "lr": muon.param_groups[0]["lr"],
                                   "train_seconds": run["train_seconds"]})
            run["window"] = [0.0, 0]
        if step % loader.batches_per_epoch == 0:
            record = {"step": step, "epoch": step // loader.batches_per_epoch,
                      "train_acc_last_batch": float((logits.argmax(1) == labels).float().mean())}
            if args.eval_every_epoch:
                record["val_acc_no_tta"] = evaluate(model, test_inputs, test_labels, tta=False)[1]
            run["metrics"].append(record)
        if len(run["metrics"]) and run["metrics"][-1]["step"] == step:
            write_metrics(metrics_path, run["metrics"])
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save_checkpoint(ckpt_path, run)
            last_saved = step

    if run["step"] != last_saved or not os.path.exists(ckpt_path):
        save_checkpoint(ckpt_path, run)
    if run["step"] < total_steps:
        print(f"stopped at step {run['step']}/{total_steps} with a checkpoint; "
              f"rerun the same command to continue", flush=True)
        return

    start = time.perf_counter()
    val_acc, val_acc_no_tta = evaluate(model, test_inputs, test_labels, tta=True)
    summary = {"val_acc": val_acc, "val_acc_no_tta": val_acc_no_tta,
               "train_seconds": run["train_seconds"], "eval_seconds": time.perf_counter() - start,
               "steps": total_steps, "epochs": args.epochs, "seed": args.seed,
               "threads": args.threads, "device": "cpu", "dtype": "float32",
               "torch": torch.__version__, "data": os.path.abspath(args.data)}
    write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
