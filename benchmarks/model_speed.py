"""Training and inference throughput (images/s) of every registered model on this machine.

Each model is timed on random inputs of its own size: a few warm-up steps, then ``--steps``
SGD steps (forward, loss, backward, update) at ``--batch`` and inference passes at
``--infer-batch``. Prints a markdown table and makes it the current section of those ``--models``
in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/model_speed.py                      # every model
    .venv/bin/python benchmarks/model_speed.py --models 'resnet*_48,sphereface*' --steps 5
"""
from __future__ import annotations

import argparse
import time

import torch

from _common import loadavg, publish_result


def _time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(name: str, batch: int, infer_batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Train and inference images/s of one registered model, with its parameter count."""
    from groupmood.models import create_model, model_info

    info = model_info(name)
    classes = 3 if info.family == "global" else 8
    model = create_model(name, num_classes=classes).to(device)
    params = sum(p.numel() for p in model.parameters())
    shape = (info.in_chans, *info.input_size)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x, target=y), y)
        loss.backward()
        opt.step()

    model.train()
    t_train = _time(train_step, steps, warmup)
    model.eval()
    xi = torch.randn(infer_batch, *shape, device=device)
    with torch.inference_mode():
        t_infer = _time(lambda: model(xi), steps, warmup)
    return {"model": name, "family": info.family, "input": "x".join(map(str, shape)), "params_m": params / 1e6,
            "train_ips": batch / t_train, "infer_ips": infer_batch / t_infer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="*", help="comma-separated shell patterns over registered model names")
    ap.add_argument("--batch", type=int, default=16, help="training batch")
    ap.add_argument("--infer-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from groupmood.models import list_models

    load_start = loadavg()
    rows = []
    names = sorted({n for pattern in args.models.split(",") for n in list_models(pattern.strip())})
    for name in names:
        r = measure(name, args.batch, args.infer_batch, args.steps, args.warmup, torch.device(args.device))
        print(f"{r['model']:22s} train {r['train_ips']:8.1f} img/s  infer {r['infer_ips']:8.1f} img/s", flush=True)
        rows.append(r)
    table = ["| model | family | input (CxHxW) | params (M) | train img/s (batch %d) | inference img/s (batch %d) |"
             % (args.batch, args.infer_batch), "|---|---|---|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['family']} | {r['input']} | {r['params_m']:.3f} | {r['train_ips']:.1f} | "
              f"{r['infer_ips']:.1f} |" for r in rows]
    publish_result(f"Model throughput: `{args.models}` on {args.device}", args.threads, load_start, [
        f"Device {args.device}. Random inputs at each model's own size; SGD steps with cross-entropy; "
        "BatchNorm in train mode (global models keep theirs frozen)."], table, not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
