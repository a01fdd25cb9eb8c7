"""``groupmood export``: a checkpoint as fp16 safetensors for shipping, or models as ONNX for ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError


@click.command("export")
@click.argument("checkpoint", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx"]), default="safetensors", show_default=True,
              help="safetensors: CHECKPOINT as fp16 safetensors. onnx: MTCNN and every model of --bundle (or "
                   "CHECKPOINT alone) exported for ONNX Runtime into the cache, each checked against PyTorch.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .safetensors (default: beside the checkpoint); safetensors only.")
@click.option("--bundle", type=click.Path(dir_okay=False), default=None,
              help="Bundle YAML (or a shipped bundle's name) whose models --format onnx exports (default: the shipped "
                   "default bundle).")
def export_cmd(checkpoint: Path | None, fmt: str, out: Path | None, bundle: str | None) -> int:
    """Export CHECKPOINT as fp16 safetensors with its config embedded, or models as ONNX (``--format onnx``).

    ONNX files go to ``$GROUPMOOD_HOME/onnx``, named by the sha256 of the weights: ``predict``
    (``--backend onnxruntime``, the default on a CPU) exports them itself on first use; this command
    does it ahead of time (for an offline machine) and shows each file's largest difference from
    PyTorch on the real faces of the ``group`` sample photo (the limit is 1e-4).
    """
    if fmt == "safetensors":
        if checkpoint is None:
            raise click.UsageError("give the CHECKPOINT to export as safetensors (or --format onnx)")
        from ..engine.checkpointing import export

        if out is not None and out.suffix != ".safetensors":
            raise ConfigError(f"--out {out} must end in .safetensors")
        click.echo(f"exported {export(checkpoint, out)}")
        return 0
    if out is not None:
        raise click.UsageError("--out is for --format safetensors; ONNX files go to the cache ($GROUPMOOD_HOME/onnx)")
    if checkpoint is not None and bundle is not None:
        raise click.UsageError("give a CHECKPOINT or --bundle, not both")
    from ..detect import FaceDetector
    from ..pipeline import Branch, GroupEmotionRecognizer, default_bundle_path

    detector = FaceDetector.from_pretrained(device="cpu", auto_fetch=True)
    if checkpoint is not None:
        rec = GroupEmotionRecognizer(detector, {"model": Branch.from_file(checkpoint)}, {"model": 1.0})
    else:
        rec = GroupEmotionRecognizer.from_bundle(bundle or default_bundle_path(), device="cpu", detector=detector)
    ort = rec.with_backend("onnxruntime")
    models = {"mtcnn_" + n: f for n, f in zip(("pnet", "rnet", "onet"), ort.detector.runners)}
    models.update({n: br.runner for n, br in ort.branches.items()})
    for name, model in models.items():
        click.echo(f"{name}: {model.path} (max abs difference from PyTorch {model.parity:.1e})")
    return 0
