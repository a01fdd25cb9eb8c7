"""One training loop for every branch: build, train, checkpoint, resume, evaluate, export.

The loop knows nothing about datasets: :func:`groupmood.data.build_data` builds them from
``data.kind``. What makes a killed run resumable bit for bit:

- the data order of an epoch is a permutation seeded by (seed, epoch) (:mod:`.samplers`) and the
  augmentation of a batch is seeded by (seed, epoch, batch), so resuming mid-epoch just skips the
  consumed batches;
- the learning rate is a pure function of the step (:func:`.schedule.lr_at`), so the schedule's
  state is the step itself;
- ``last.pt`` (written atomically every ``train.ckpt_every`` steps and at each epoch end) holds
  the model (with the margin heads' annealing counter), optimizer, AMP scaler, the torch / numpy /
  python / CUDA RNG states, epoch, batch position, step, the epoch's running sums and the best
  validation metric (:mod:`.checkpointing`).

Each epoch appends a row to ``metrics.csv`` and ``metrics.jsonl``; the best validation accuracy
is kept as ``best.pt`` and exported to ``model.safetensors`` (fp16, config in the metadata).

Under torchrun (``WORLD_SIZE > 1``) the same loop runs in every process (:mod:`.distributed`):
``train.batch_size`` stays the global batch, split evenly across processes by
:class:`.samplers.EpochDistributedSampler` so that global batch b holds the items one process
would take; the batch augmentation is drawn for the global batch and each process keeps its own
samples; ``DistributedDataParallel`` averages the gradients; loss and accuracy sums are added over
the processes at every step, so every process holds the same :class:`.checkpointing.TrainState`;
validation is split across processes and gathered; rank 0 alone writes. ``scaling.json`` in the
run folder records the number of processes, the per-process and effective batch, the
learning-rate rule and the BatchNorm mode.
"""
from __future__ import annotations

import csv
import fnmatch
import json
import math
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Sampler
from tqdm.auto import tqdm

from ..checkpoint import ARCH_KEYS, build_model, read_checkpoint, read_state_dict
from ..config import dump_config, resolve_data
from ..data import DataBundle, SubsetDataset, build_data
from ..data.transforms import normalize
from ..errors import ConfigError, WeightsError
from ..io import atomic_write
from ..losses import class_balanced_weights
from ..models import model_info
from ..models.converters import has_pretrained_loader, load_pretrained
from . import distributed as dist_
from .checkpointing import TrainState, check_resumable, export, rng_state, save_checkpoint, set_rng_state
from .evaluate import classification_report, predict
from .samplers import EpochBatchSampler, EpochDistributedSampler
from .schedule import lr_at

# export is defined in .checkpointing and offered here too, next to train, for callers that import both.
__all__ = ["BATCHNORM_MODES", "Trainer", "export", "resolve_device", "train"]

_BATCHNORM_TEXT = {
    "batch": "each process normalises by the statistics of its own batch (batch_size_per_process items); the "
             "running statistics kept are rank 0's (DistributedDataParallel broadcasts its buffers)",
    "sync": "SyncBatchNorm: statistics of the whole effective batch over all processes (CUDA), as one process "
            "with the same batch would compute them",
    "frozen": "BatchNorm layers stay in eval mode: running statistics fixed as initialised or loaded, never "
              "updated; results do not depend on the number of processes",
}
#: train.batchnorm: each process's own batch statistics | SyncBatchNorm over the global batch | running stats fixed.
BATCHNORM_MODES = ("batch", "sync", "frozen")
#: What scaling.json says about the learning rate.
LR_RULE = ("optim.lr is the learning rate of the effective (global) batch train.batch_size, whatever the number "
           "of processes: each process takes batch_size / world_size items and DistributedDataParallel averages "
           "the gradients, so the same recipe gives the same updates on 1 or N processes and needs no scaling. "
           "To train with a larger effective batch, raise train.batch_size and scale optim.lr linearly with it "
           "(Goyal et al. 2017), with sched.warmup_iters of a few hundred steps.")


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None) -> CUDA when available, else CPU; anything else as torch spells it."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, stable across platforms)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _write_rows(run_dir: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to metrics.jsonl / metrics.csv, replacing rows of the same or later epochs."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("epoch", -1) < row["epoch"]] + [dict(row)]
    with atomic_write(path) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_write(run_dir / "metrics.csv") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class Trainer:
    """Holds one run: config, device, data, model, optimizer and state; :meth:`fit` trains it."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | Path, device: str | None = None,
                 resume: bool = False) -> None:
        self.cfg = {**cfg, "data": resolve_data(cfg["data"])}  # the saved config.yaml is complete
        self.run_dir = Path(run_dir)
        self.device = resolve_device(device or self.cfg.get("device"))
        self.dist = dist_.SINGLE
        if dist_.requested():
            self.device = dist_.process_device(self.device)
            self.dist = dist_.setup(self.device)
        created = not self.run_dir.exists()
        try:
            self._build(resume)
        except BaseException:
            if created and self.dist.is_main:  # a run that could not start leaves no folder behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            dist_.teardown(self.dist)
            raise

    def _build(self, resume: bool) -> None:
        """Everything after the process group: data, model, optimizer, state (resumed or initialised)."""
        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg["threads"]))
        self.seed = int(self.cfg.get("seed", 0))
        self.tcfg = self.cfg["train"]
        self.progress = bool(self.tcfg.get("progress", True)) and self.dist.is_main
        self.batchnorm = self._batchnorm_mode()
        try:
            self.info = model_info(self.cfg["model"]["name"])
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            check_resumable(self.run_dir, self.cfg)
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        with dist_.main_first(self.dist):  # rank 0 writes split files and caches; the others read them
            self.data: DataBundle = build_data(self.cfg, self.info, self.run_dir, self._splits())
        self._take_subset()
        self.classes = tuple(self.data.classes)
        self.loss_weight = self._loss_weight()
        self.label_smoothing = float((self.cfg.get("loss") or {}).get("label_smoothing") or 0.0)
        self.select_by = self._select_by()
        self.model = self._build_model()
        if self.batchnorm == "sync" and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        self.use_cuda = self.device.type == "cuda"
        if self.use_cuda and self.tcfg.get("channels_last", True):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self._build_optimizer()
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.iters_per_epoch = len(self.data.datasets["train"]) // int(self.tcfg["batch_size"])
        if int(self.tcfg["batch_size"]) % self.dist.world_size:
            raise ConfigError(f"train.batch_size {self.tcfg['batch_size']} (the global batch) must divide evenly "
                              f"among {self.dist.world_size} processes; use a multiple of {self.dist.world_size}")
        if self.iters_per_epoch < 1:
            raise ConfigError(f"train.batch_size {self.tcfg['batch_size']} is larger than the training set "
                              f"({len(self.data.datasets['train'])} images); lower it")
        max_iters = self.tcfg.get("max_iters")
        self.total_iters = int(self.tcfg["epochs"]) * self.iters_per_epoch
        if max_iters:
            self.total_iters = min(self.total_iters, int(max_iters))
        if resume:
            self._resume()
        else:
            if self.dist.is_main:
                dump_config(self.cfg, self.run_dir / "config.yaml")
            with dist_.main_first(self.dist):  # pretrained weights may be fetched into the shared cache
                self._init_pretrained()
                if self.cfg.get("init_from"):
                    self._init_from(Path(self.cfg["init_from"]), list(self.cfg.get("init_exclude") or []))
        if self.dist.enabled and not resume:
            # every process now holds the same weights; from here on each draws its own dropout masks
            torch.manual_seed(_mix(self.seed, self.dist.rank, 0xD15))
        if self.dist.is_main:
            self._write_scaling(resume)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.use_cuda else None)

    # ------------------------------------------------------------------ building

    @property
    def epochs(self) -> int:
        """Epochs the recipe runs (the last one partial when train.max_iters cuts it)."""
        return math.ceil(self.total_iters / self.iters_per_epoch)

    def _splits(self) -> tuple[str, ...]:
        fractions = self.cfg["data"].get("split") or {}
        val_every = self.tcfg.get("val_every", 1)
        if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 0:
            raise ConfigError(f"train.val_every must be an integer >= 0 (0: never validate), got {val_every!r}")
        if val_every == 0 or (self.cfg["data"]["kind"] != "ferplus" and not (fractions.get("val") or 0) > 0):
            return ("train",)
        return ("train", "val")

    def _batchnorm_mode(self) -> str:
        """``train.batchnorm``, checked against the device: SyncBatchNorm exists on CUDA only (torch's own limit)."""
        mode = self.tcfg.get("batchnorm", "batch")
        if mode not in BATCHNORM_MODES:
            raise ConfigError(f"train.batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {mode!r}")
        if mode == "sync" and self.dist.enabled and self.device.type != "cuda":
            raise ConfigError("train.batchnorm=sync needs CUDA (torch's SyncBatchNorm runs on GPUs only); on CPU "
                              "use batch (each process normalises its own batch) or frozen")
        return mode

    def _write_scaling(self, resume: bool) -> None:
        """``scaling.json``: processes, per-process and effective batch, learning-rate rule, BatchNorm mode."""
        batch = int(self.tcfg["batch_size"])
        frozen_by_model = bool(getattr(self.model, "freeze_bn", False))
        info = {
            "world_size": self.dist.world_size, "backend": self.dist.backend, "device": self.device.type,
            "batch_size_per_process": batch // self.dist.world_size, "effective_batch_size": batch,
            "lr": float(self.cfg["optim"]["lr"]), "lr_rule": LR_RULE,
            "batchnorm": "frozen (model.kwargs.freeze_bn)" if frozen_by_model else self.batchnorm,
            "batchnorm_rule": _BATCHNORM_TEXT["frozen" if frozen_by_model else self.batchnorm],
            "resumed": resume,
        }
        with atomic_write(self.run_dir / "scaling.json") as fh:
            fh.write(json.dumps(info, indent=2) + "\n")

    def _take_subset(self) -> None:
        """train.subset: keep a fixed, seeded choice of that many training items."""
        n = self.tcfg.get("subset")
        if n is None:
            return
        full = self.data.datasets["train"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(full):
            raise ConfigError(f"train.subset must be an integer from 1 to the training set's size "
                              f"({len(full)}), got {n!r}")
        rng = np.random.default_rng([self.seed, 0x5B5E7])
        self.data.datasets["train"] = SubsetDataset(full, np.sort(rng.choice(len(full), n, replace=False)))

    def _loss_weight(self) -> Tensor | None:
        """``loss.class_weights``: None, ``balanced`` (from the training labels) or one weight per class."""
        spec = (self.cfg.get("loss") or {}).get("class_weights")
        if spec is None:
            return None
        if spec == "balanced":
            labels = torch.as_tensor(np.asarray(self.data.datasets["train"].labels))
            weight = class_balanced_weights(labels, len(self.classes))
        elif isinstance(spec, (list, tuple)) and len(spec) == len(self.classes) and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in spec):
            weight = torch.tensor([float(w) for w in spec])
        else:
            raise ConfigError(f"loss.class_weights must be null, 'balanced' or {len(self.classes)} non-negative "
                              f"numbers (classes {', '.join(self.classes)}), got {spec!r}")
        return weight.to(self.device)

    def _build_model(self) -> nn.Module:
        m = self.cfg["model"]
        try:
            return build_model(m, len(self.classes))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cannot build model {m['name']!r} from the model section: {exc}") from None

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg["optim"]
        head_mult, trunk_mult = float(o.get("head_lr_mult", 1.0)), float(o.get("trunk_lr_mult", 1.0))
        if head_mult <= 0 or trunk_mult < 0:
            raise ConfigError(f"optim.head_lr_mult must be > 0 and optim.trunk_lr_mult >= 0, got {head_mult} and "
                              f"{trunk_mult}")
        head, trunk = [], []
        for name, p in self.model.named_parameters():
            (head if name.startswith("head.") else trunk).append(p)
        if trunk_mult == 0:
            for p in trunk:  # no gradient at all: the backward pass stops at the head
                p.requires_grad_(False)
        groups = [{"params": [p for p in trunk if p.requires_grad], "lr_mult": trunk_mult},
                  {"params": head, "lr_mult": head_mult}]
        groups = [g for g in groups if g["params"]]
        return torch.optim.SGD(groups, lr=float(o["lr"]), momentum=float(o["momentum"]),
                               weight_decay=float(o["weight_decay"]), nesterov=bool(o.get("nesterov", False)))

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.use_cuda and self.tcfg.get("amp", True)):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _init_pretrained(self) -> None:
        """``model.pretrained`` through :func:`~groupmood.models.converters.load_pretrained` (global nets, the
        identity trunk); init_from may replace it."""
        source = self.cfg["model"].get("pretrained")
        if not has_pretrained_loader(self.model):
            if source is not None:
                raise ConfigError(f"model.pretrained is set but {self.info.name} has no pretrained loader; "
                                  "use init_from with a groupmood checkpoint")
            return
        if source is not None or not self.cfg.get("init_from"):
            load_pretrained(self.model, source)

    def _init_from(self, path: Path, exclude: list[str]) -> None:
        """Fine-tune start: load matching weights; shape mismatches (a new head) and excluded keys skip."""
        try:
            state = read_state_dict(path)
        except WeightsError as exc:
            raise ConfigError(f"init_from: {exc}") from None
        own = self.model.state_dict()
        take = {k: v for k, v in state.items()
                if k in own and v.shape == own[k].shape and not any(fnmatch.fnmatch(k, p) for p in exclude)}
        if not take:
            raise ConfigError(f"init_from {path}: no weight matches model {self.info.name}; is it the same "
                              "architecture?")
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in take.items()}, strict=False)
        skipped = sorted(set(own) - set(take))
        self._say(f"init_from {path}: loaded {len(take)} tensors, kept {len(skipped)} as initialised"
              + (f" ({', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''})" if skipped else ""))

    # ------------------------------------------------------------------ checkpoints

    def _say(self, text: str) -> None:
        """A log line, from rank 0 only."""
        if self.dist.is_main:
            tqdm.write(text)

    def _checkpoint(self, path: Path, full: bool = True) -> None:
        """Save a checkpoint from rank 0; a full one gathers every process's RNG state first (all ranks call)."""
        rng = rng_state() if full else None
        ranks = dist_.all_gather(self.dist, rng) if full and self.dist.enabled else None
        if not self.dist.is_main:
            return
        obj: dict[str, Any] = {
            "model": self.model.state_dict(), "config": self.cfg, "classes": list(self.classes),
            "epoch": self.state.epoch, "step": self.state.step, "metric": self.state.best_metric,
            "family": self.info.family, "recipe": self.info.recipe(self.classes),
            "arch": {k: self.cfg["model"][k] for k in ARCH_KEYS if k in self.cfg["model"]},
        }
        if full:
            obj.update({"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                        "state": asdict(self.state), "rng": rng, "total_iters": self.total_iters,
                        "world_size": self.dist.world_size})
            if ranks is not None:
                obj["rng_ranks"] = ranks
        save_checkpoint(obj, path)

    def _resume(self) -> None:
        saved = read_checkpoint(self.run_dir / "last.pt")
        ckpt = saved.extra
        self.model.load_state_dict(saved.state)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        saved_world = int(ckpt.get("world_size", 1))
        ranks = ckpt.get("rng_ranks")
        set_rng_state(ranks[self.dist.rank] if ranks and len(ranks) == self.dist.world_size else ckpt["rng"])
        if saved_world != self.dist.world_size:
            if self.dist.enabled:
                torch.manual_seed(_mix(self.seed, self.state.step, self.dist.rank, 0xD15))
            self._say(f"note: this run was saved by {saved_world} process(es) and resumes on "
                      f"{self.dist.world_size}: same global batch and data order; per-process BatchNorm "
                      "statistics (train.batchnorm=batch) and dropout masks differ from an uninterrupted run")
        self._say(f"resumed {self.run_dir} at epoch {self.state.epoch}, batch {self.state.batch_in_epoch}, "
                  f"step {self.state.step}")

    # ------------------------------------------------------------------ the loop

    def _loader(self, epoch: int, start: int, stop: int) -> DataLoader:
        ds = self.data.datasets["train"]
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        batch = int(self.tcfg["batch_size"])
        sampler: Sampler[list[int]] = EpochBatchSampler(len(ds), batch, self.seed, epoch, start, stop)
        if self.dist.enabled:
            share = EpochDistributedSampler(ds, batch, self.seed, epoch, self.dist.world_size, self.dist.rank,
                                            start, stop)
            sampler = BatchSampler(share, share.local_batch, drop_last=True)
        workers = int(self.cfg["data"].get("workers") or 0)
        return DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=self.use_cuda,
                          generator=torch.Generator().manual_seed(_mix(self.seed, epoch, 7)),
                          persistent_workers=False)

    def _step(self, x: Tensor, y: Tensor, batch_index: int) -> tuple[float, int]:
        """One optimizer step; returns (summed loss, correct count) of the batch."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.data.batch_augment is not None:
            gen = torch.Generator().manual_seed(_mix(self.seed, self.state.epoch, batch_index, 11))
            x = self._augment(x, gen)
        x = normalize(x, self.info)
        if self.use_cuda and self.tcfg.get("channels_last", True):
            x = x.contiguous(memory_format=torch.channels_last)
        hard = y.argmax(dim=1) if y.ndim == 2 else y
        lr = lr_at(self.state.step, float(self.cfg["optim"]["lr"]), self.cfg["sched"], self.iters_per_epoch,
                   self.total_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = self.net(x, target=hard)
        loss = F.cross_entropy(logits.float(), y.float() if y.ndim == 2 else y, weight=self.loss_weight,
                               label_smoothing=self.label_smoothing)
        if not torch.isfinite(loss):
            raise ConfigError(f"the loss became {loss.item()} at step {self.state.step} (lr {lr:g}); lower "
                              "optim.lr, add sched.warmup_iters, or use a softmax head first")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()) * len(y), int((logits.detach().argmax(dim=1) == hard).sum())

    def _augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """The batch augmentation; with N processes drawn for the global batch, this process's samples kept.

        Process r holds positions r, r + N, ... of the global batch (:class:`EpochDistributedSampler`),
        so it takes those rows of the global draw: every item gets the transform it gets in one process.
        """
        aug = self.data.batch_augment
        if not self.dist.enabled:
            return aug(x, gen)
        r, n = self.dist.rank, self.dist.world_size
        params = {k: v[r::n] for k, v in aug.sample(len(x) * n, gen).items()}
        b, c, h, w = x.shape
        grid = F.affine_grid(aug.theta(params, h, w).to(x.device), [b, c, h, w], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _set_train_mode(self) -> None:
        """``model.train()``, with every BatchNorm back in eval mode when ``train.batchnorm`` is frozen."""
        self.model.train()
        if self.batchnorm == "frozen":
            for mod in self.model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()

    def _train_epoch(self) -> bool:
        """Run the rest of the current epoch; False when train.max_steps stopped the run early."""
        st, ckpt_every = self.state, int(self.tcfg.get("ckpt_every") or 0)
        max_steps = self.tcfg.get("max_steps")
        end = min(self.iters_per_epoch, self.total_iters - st.epoch * self.iters_per_epoch)
        loader = self._loader(st.epoch, st.batch_in_epoch, end)
        bar = tqdm(total=end, initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}", unit="batch",
                   disable=not self.progress, leave=False)
        t0 = time.perf_counter()
        self._set_train_mode()
        with bar:
            for x, y in loader:
                loss, correct = self._step(x, y, st.batch_in_epoch)
                n = len(y)
                if self.dist.enabled:  # the global batch's sums, so that every process holds the same state
                    loss, correct, n = dist_.sum_counts(self.dist, [loss, correct, n], self.device)
                    correct, n = round(correct), round(n)
                st.loss_sum, st.correct, st.seen = st.loss_sum + loss, st.correct + correct, st.seen + n
                st.batch_in_epoch += 1
                st.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{st.loss_sum / st.seen:.3f}", acc=f"{st.correct / st.seen:.3f}")
                stop = max_steps is not None and st.step >= int(max_steps)
                if stop or (ckpt_every and st.step % ckpt_every == 0):
                    st.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self._checkpoint(self.run_dir / "last.pt")
                if stop:
                    return False
        st.seconds += time.perf_counter() - t0
        return True

    def _end_epoch(self) -> dict[str, Any]:
        """Validate, log the epoch's metrics, keep the best model, save ``last.pt``."""
        st = self.state
        row: dict[str, Any] = {
            "epoch": st.epoch + 1, "step": st.step,
            "lr": lr_at(max(st.step - 1, 0), float(self.cfg["optim"]["lr"]), self.cfg["sched"],
                        self.iters_per_epoch, self.total_iters),
            "train_loss": st.loss_sum / max(st.seen, 1), "train_acc": st.correct / max(st.seen, 1),
            "images_per_s": st.seen / st.seconds if st.seconds > 0 else 0.0,
        }
        val = self.data.datasets.get("val")
        metric = row["train_acc"] if val is None else -math.inf  # an epoch without validation is never "best"
        every = int(self.tcfg.get("val_every", 1))
        last = st.epoch + 1 >= self.epochs
        if val is not None and ((st.epoch + 1) % every == 0 or last):
            probs, labels = self._validate(val)
            rep = classification_report(probs, labels, self.classes, self.cfg["data"].get("surprise", "Positive"))
            row["val_acc"], row["val_mean_class_acc"] = rep["accuracy"], rep["mean_class_accuracy"]
            metric = rep[self.select_by]
            if "valence" in rep:
                row["val_valence_acc"] = rep["valence"]["accuracy"]
        if self.dist.is_main:
            _write_rows(self.run_dir, row)
        improved = metric > st.best_metric
        if improved:
            st.best_metric, st.best_epoch = metric, st.epoch + 1
        st.epoch += 1
        st.batch_in_epoch, st.loss_sum, st.correct, st.seen, st.seconds = 0, 0.0, 0, 0, 0.0
        if improved:
            self._checkpoint(self.run_dir / "best.pt", full=False)
        self._checkpoint(self.run_dir / "last.pt")
        self._say("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        return row

    def _validate(self, val: Any) -> tuple[Tensor, Tensor]:
        """Probabilities and labels of the validation set; with N processes each predicts a slice, gathered."""
        batch, tta = int(self.tcfg["eval_batch_size"]), bool(self.tcfg.get("tta_flip"))
        if not self.dist.enabled:
            return predict(self.model, val, self.info, self.device, batch, tta, self.progress, desc="val")
        n, r, w = len(val), self.dist.rank, self.dist.world_size
        part = SubsetDataset(val, np.arange(r * n // w, (r + 1) * n // w))
        probs, labels = predict(self.model, part, self.info, self.device, batch, tta, self.progress, desc="val")
        parts = dist_.all_gather(self.dist, (probs, labels))
        return torch.cat([p for p, _ in parts]), torch.cat([lab for _, lab in parts])

    def _select_by(self) -> str:
        """``train.select_by``: the validation figure that picks ``best.pt``."""
        key = self.tcfg.get("select_by", "accuracy")
        if key not in ("accuracy", "mean_class_accuracy"):
            raise ConfigError(f"train.select_by must be accuracy or mean_class_accuracy, got {key!r}")
        return key

    def fit(self) -> dict[str, Any]:
        """Train to the end (or to ``train.max_steps``); returns a summary of the run."""
        last: dict[str, Any] = {}
        finished = True
        while self.state.epoch < self.epochs:
            if not self._train_epoch():
                finished = False
                break
            last = self._end_epoch()
        summary = {"run_dir": str(self.run_dir), "finished": finished, "step": self.state.step,
                   "epoch": self.state.epoch, "best_metric": self.state.best_metric,
                   "best_epoch": self.state.best_epoch, "last": last,
                   "validated": "val" in self.data.datasets}
        if finished and self.dist.is_main and (self.run_dir / "best.pt").is_file():
            summary["export"] = str(export(self.run_dir / "best.pt", self.run_dir / "model.safetensors"))
        summary.update(world_size=self.dist.world_size, rank=self.dist.rank)
        return summary

    def close(self) -> None:
        """Leave the process group this trainer created (waits for the others first)."""
        dist_.barrier(self.dist)
        dist_.teardown(self.dist)


def train(cfg: Mapping[str, Any], run_dir: str | Path, resume: bool = False,
          device: str | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (``resume`` continues its ``last.pt``); returns a summary.

    Under torchrun (``WORLD_SIZE > 1``) every process calls this; see :mod:`groupmood.engine.distributed`.
    """
    trainer = Trainer(cfg, run_dir, device=device, resume=resume)
    try:
        summary = trainer.fit()
    except BaseException:
        dist_.teardown(trainer.dist)  # no barrier: the other processes may be gone (torchrun stops them)
        raise
    trainer.close()
    return summary

