"""PyTorch reference values for tests/test_torch_reference.cpp.

Builds three tiny networks with fixed seeds, runs one forward and backward pass in float32 and
writes, per network, a safetensors file holding everything the C++ test needs to rebuild the
same computation without Python:
  <state_dict name>          every weight and buffer, named as our modules name them
  input, labels / target     the batch (the input requires grad)
  loss                       the scalar loss
  grad.<name>, grad.input    the gradient of every parameter and of the input
  after.<buffer name>        buffers after the forward pass (batch-norm running statistics)

Regenerate (needs PyTorch; the committed files were made with torch 1.13 on the CPU) with
    /usr/bin/python3 tests/reference/make_reference.py
from the repository root; it overwrites tests/reference/*.safetensors.
The safetensors format is written by hand (struct + json) so that only torch is needed.
"""

import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPE_CODES = {torch.float32: "F32", torch.int64: "I64"}


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        data = tensor.numpy().tobytes()
        header[name] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def record(name, model, inputs, loss_fn, description):
    """Runs forward+backward and writes the reference file for `model`."""
    # num_batches_tracked only matters for momentum=None, which our BatchNorm2d does not offer.
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = inputs["input"].clone().requires_grad_(True)
    loss = loss_fn(model(x), inputs)
    loss.backward()
    tensors = dict(state)
    tensors.update(inputs)
    tensors["loss"] = loss.detach().reshape(())
    tensors["grad.input"] = x.grad
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad
    for bname, b in model.named_buffers():
        if not bname.endswith("num_batches_tracked"):
            tensors["after." + bname] = b
    write_safetensors(os.path.join(HERE, name + ".safetensors"), tensors,
                      {"torch": torch.__version__, "description": description})


def mlp_reference():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5))
    inputs = {"input": torch.randn(16, 20), "labels": torch.randint(0, 5, (16,))}
    record("mlp", model, inputs, lambda out, b: F.cross_entropy(out, b["labels"]),
           "Sequential(Linear(20,32), ReLU, Linear(32,32), GELU, Linear(32,5)) + cross_entropy")


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        # A bias right before batch norm gets an exactly zero gradient (rounding noise), so the
        # biased convolution is the second one, whose GELU comes before its batch norm.
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.gelu(self.bn1(self.conv1(x))), 2)
        x = self.bn2(F.gelu(self.conv2(x)))
        return self.head(torch.amax(x, dim=(2, 3)))


def conv_reference():
    torch.manual_seed(2)
    model = ConvNet().train()
    with torch.no_grad():  # non-trivial running statistics, so their update is checked too
        for bn in (model.bn1, model.bn2):
            bn.running_mean.copy_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.copy_(0.5 + torch.rand_like(bn.running_var))
            bn.weight.copy_(1 + 0.1 * torch.randn_like(bn.weight))
            bn.bias.copy_(0.1 * torch.randn_like(bn.bias))
    inputs = {"input": torch.randn(8, 3, 12, 12), "labels": torch.randint(0, 10, (8,))}
    record("convnet", model, inputs, lambda out, b: F.cross_entropy(out, b["labels"], label_smoothing=0.1),
           "Conv2d-BatchNorm2d(train)-GELU-max_pool2d, Conv2d(stride 2)-GELU-BatchNorm2d, global max pool, "
           "Linear, cross_entropy(label_smoothing=0.1)")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.reshape(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        scores = q @ k.transpose(-2, -1) / math.sqrt(C // self.heads)
        causal = torch.ones(T, T, dtype=torch.bool).triu(1)
        y = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def attention_reference():
    torch.manual_seed(3)
    model = Block(32, 4)
    with torch.no_grad():
        for ln in (model.ln1, model.ln2):
            ln.weight.copy_(1 + 0.1 * torch.randn_like(ln.weight))
            ln.bias.copy_(0.1 * torch.randn_like(ln.bias))
    inputs = {"input": torch.randn(2, 8, 32), "target": torch.randn(2, 8, 32)}
    record("attention_block", model, inputs, lambda out, b: F.mse_loss(out, b["target"]),
           "pre-norm transformer block: LayerNorm, qkv Linear, causal 4-head attention, proj, residual, "
           "LayerNorm, MLP with GELU(tanh), residual; loss mse against target")


if __name__ == "__main__":
    torch.set_num_threads(1)
    mlp_reference()
    conv_reference()
    attention_reference()
