"""PyTorch peer of the JAX training-step benchmark: the same network, shapes and step.

    python benchmarks/torch_peer.py --variant b4 --height 1024 --width 512 --batch 8 \
        [--amp bf16] [--channels-last] [--compile] [--grad-checkpointing] \
        [--steps 10 --repeats 3] [--json out.json]

Network: timm ``tf_efficientnet_<variant>`` (TF "same" padding, BatchNorm eps 1e-3;
``in_chans=1``, ``num_classes=0``, never pretrained: nothing is downloaded) plus the
clinical fusion head of ``vertex_jax.models.vertex`` (image features → Dropout →
Linear(·, 100); [values·mask, mask] → (Linear-BN-ReLU-Dropout(0.2)) × (64, 32); concat →
Linear(·, 100) → Linear(100, tasks)). ``tiny`` is built with the same compound-scaling
rules. Step: uint8 canvases already on the device → [0, 1] → the same rotation / scale /
noise augmentation → ImageNet grey normalisation → BCE with logits → gradient clipping
(global norm 1) → AdamW (lr 1e-4, weight decay 1e-4), as ``vertex_jax.train.step``.

Reports images/s (median of ``--repeats`` runs of ``--steps`` steps after two warm-up
steps) and writes the JSON record format of ``python -m vertex_jax.bench``; model FLOPs
come from ``torch.utils.flop_counter`` on one eager step. Needs ``torch`` and ``timm``
(the ``peer`` extra: ``pip install torch timm``); run from a source checkout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vertex_jax

from vertex_jax.bench.record import CpuClock, document, host, make_record, versions  # noqa: E402
from vertex_jax.models.efficientnet import VARIANTS  # noqa: E402

_KEEP_ALIVE = []  # operator libraries registered by import_timm


def import_timm():
    """timm; also beside a torchvision whose compiled operators do not match torch (a CUDA
    torchvision next to a CPU torch), which fails while registering fake kernels for
    ``torchvision::nms`` / ``qnms``: declaring those two schemas lets it import. EfficientNet
    uses no torchvision operator."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP_ALIVE.append(lib)
    import timm
    return timm


def backbone(variant: str) -> nn.Module:
    """timm's TF-compatible EfficientNet, grey input, no classifier."""
    timm = import_timm()
    kwargs = dict(pretrained=False, in_chans=1, num_classes=0, drop_path_rate=0.2)
    if variant.startswith("b"):
        return timm.create_model(f"tf_efficientnet_{variant}", **kwargs)
    from timm.models.efficientnet import _gen_efficientnet  # B0 stages, any scaling
    v = VARIANTS[variant]
    return _gen_efficientnet("tf_efficientnet_b0", channel_multiplier=v.width, depth_multiplier=v.depth,
                             bn_eps=1e-3, pad_type="same", **kwargs)


class VertexPeer(nn.Module):
    """EfficientNet features fused with [clinical·mask, mask], one logit per task."""

    def __init__(self, variant: str, tasks: int, clinical: int = 3, hidden=(64, 32)):
        super().__init__()
        self.backbone = backbone(variant)
        self.image_dropout = nn.Dropout(VARIANTS[variant].dropout)
        self.image_projection = nn.Linear(self.backbone.num_features, 100)
        layers, width = [], 2 * clinical
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.2)]
            width = h
        self.clinical = nn.Sequential(*layers)
        self.fusion = nn.Linear(100 + width, 100)
        self.output = nn.Linear(100, tasks)

    def forward(self, image, clinical, mask):
        h = self.image_projection(self.image_dropout(self.backbone(image)))
        c = self.clinical(torch.cat([clinical * mask, mask], dim=1))
        return self.output(self.fusion(torch.cat([h, c], dim=1)))


def warp(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``angle_deg`` (counter-clockwise) and scale it about its centre,
    bilinear with zero fill: ``vertex_jax.train.augment.warp`` for [B, C, H, W] and [B] angles."""
    _, _, h, w = x.shape
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta) / scale, torch.sin(theta) / scale
    hh, hw = (h - 1) / 2, (w - 1) / 2  # normalised coordinates are per axis: undo the aspect
    zero = torch.zeros_like(cos)
    matrix = torch.stack([torch.stack([cos, -sin * hh / hw, zero], 1),
                          torch.stack([sin * hw / hh, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def augment(x: torch.Tensor, max_deg: float, max_scale: float, max_noise: float,
            flip: float = 0.0) -> torch.Tensor:
    """Per-example mirroring, rotation, scaling and Gaussian noise drawn as in
    ``vertex_jax.train.augment``; ``x`` [B, 1, H, W] in [0, 1]."""
    b = x.shape[0]
    if flip > 0:
        x = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < flip, x.flip(-1), x)
    uniform = lambda: torch.rand(b, device=x.device) * 2 - 1  # noqa: E731
    x = warp(x, uniform() * max_deg, 1 + uniform() * max_scale)
    sigma = torch.rand(b, 1, 1, 1, device=x.device) * max_noise
    return (x + sigma * torch.randn_like(x)).clamp(0, 1)


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's ``convolution_backward`` formula with the weight gradient counted per group:
    the stock one counts a grouped (depthwise) weight gradient as a dense convolution,
    ``groups`` times too high (the same over-count XLA:CPU has; docs/performance-notes.md)."""
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
            output_padding, groups)
    stock = conv_backward_flop.__wrapped__  # the formula on shapes
    grad_input = stock(*args, [output_mask[0], False], out_shape)
    grad_weight = stock(*args, [False, output_mask[1]], out_shape)
    return grad_input + grad_weight // groups


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, amp: str,
              augmentation: tuple[float, float, float, float] | None, channels_last: bool,
              device: torch.device):
    mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3

    def step(batch):
        x = batch["image"].float() / 255.0
        x = augment(x, *augmentation) if augmentation else x
        x = (x - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x, batch["clinical"], batch["clinical_mask"])
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss
    return step


def random_batch(batch: int, height: int, width: int, tasks: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    out = {"image": torch.randint(0, 256, (batch, 1, height, width), dtype=torch.uint8, generator=g),
           "clinical": torch.randn(batch, 3, generator=g), "clinical_mask": torch.ones(batch, 3),
           "labels": (torch.rand(batch, tasks, generator=g) < 0.3).float()}
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"device": name, "platform": device.type, "devices": 1, "processes": 1,
            "backend_version": torch.version.cuda, "threads": torch.get_num_threads(),
            "versions": versions(["torch", "timm", "numpy"]), **host()}


def wait_for_turn(ready_file: Path | None, go_file: Path | None) -> None:
    """Compiled and warmed up: say so in ``ready_file``, then wait for ``go_file`` before
    timing (the GPU check compiles this peer while it measures JAX, and times it alone)."""
    if ready_file is not None:
        ready_file.write_text("ready")
    while go_file is not None and not go_file.exists():
        time.sleep(0.05)


def run(args: argparse.Namespace) -> tuple[dict, dict]:
    """(environment, record) of one configuration."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VertexPeer(args.variant, args.tasks).to(device)
    if args.grad_checkpointing:
        model.backbone.set_grad_checkpointing(True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batch = random_batch(args.batch, args.height, args.width, args.tasks, device)
    augmentation = ((args.max_rotation, args.max_scale, args.max_noise, args.flip) if args.augment
                    else None)
    kw = dict(amp=args.amp, augmentation=augmentation, channels_last=args.channels_last, device=device)
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:  # eager, uncompiled
        make_step(model, optimizer, **kw)(batch)
    step = make_step(torch.compile(model) if args.compile else model, optimizer, **kw)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step(batch)
    _sync(device)
    first_s = time.perf_counter() - t0
    step(batch)
    _sync(device)
    wait_for_turn(args.ready_file, args.go_file)
    runs, cpu = [], []
    for _ in range(args.repeats):
        clock, t0 = CpuClock(), time.perf_counter()
        for _ in range(args.steps):
            step(batch)
        _sync(device)
        runs.append((time.perf_counter() - t0) / args.steps)
        cpu.append(tuple(x / args.steps for x in clock.lap()))
    record = make_record(
        framework="torch", what="train", variant=args.variant, height=args.height, width=args.width,
        batch=args.batch, dtype="bfloat16" if args.amp == "bf16" else "float32",
        remat=args.grad_checkpointing,
        options={"amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
                 "augment": list(augmentation) if augmentation else None,
                 "threads": torch.get_num_threads() if device.type == "cpu" else None},
        devices=1, params=params, compile_s=max(0.0, first_s - min(runs)), step_s_runs=runs,
        model_flops=float(counter.get_total_flops()),
        peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        cpu_s_runs=cpu)
    return environment(device), record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b4", choices=sorted(VARIANTS))
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--grad-checkpointing", action="store_true", help="timm's per-stage checkpointing")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--max-rotation", type=float, default=30.0, help="degrees")
    parser.add_argument("--max-scale", type=float, default=0.15, help="scale in [1 - d, 1 + d]")
    parser.add_argument("--max-noise", type=float, default=0.03, help="noise sigma, [0, 1] scale")
    parser.add_argument("--flip", type=float, default=0.0, help="left-right mirror probability")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (torch.set_num_threads); 0: torch's default")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ready-file", type=Path, help="written once compiled and warmed up")
    parser.add_argument("--go-file", type=Path, help="time only once this file exists")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env, record = run(args)
    flags = [k for k in ("compile", "channels_last") if record["options"][k]]
    print(f"torch {args.variant} {args.height}x{args.width} batch {args.batch} amp {args.amp} "
          f"{'+'.join(flags) or 'eager'} on {env['device']}: {record['images_per_s']:.3g} images/s, "
          f"{record['step_s'] * 1e3:.1f} ms/step, {record['model_flops_per_step'] / 1e9:.3g} GFLOP/step",
          flush=True)
    if args.json:
        args.json.write_text(json.dumps(document(env, [record]), indent=2))


if __name__ == "__main__":
    main()
