"""``groupmood detect``: MTCNN faces, landmarks and crops for files, folders and globs."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import click
import numpy as np

from ..align import align_faces, square_crops
from ..detect import Face
from ..io import write_image
from ..report import draw_faces
from ..errors import display_path
from ..paths import path_key
from ..runtime.session import photo_workers
from .common import (JsonlSink, build_detector, collect_paths, detector_options, output_stems,
                     refuse_outputs_over_inputs, resume_note, run_photos)


#: The names ``--crops`` gives each face's crops.
_CROP_NAME = re.compile(r"face\d{3,}_(aligned|48)\.png")


@click.command("detect")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", default="-", show_default=True,
              help="JSON Lines file (written atomically when complete), or - for stdout.")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False),
              help="Write each photo with boxes and landmarks drawn into this folder.")
@click.option("--crops", "crops_dir", type=click.Path(file_okay=False),
              help="Write each face's aligned 112x96 and non-aligned 48x48 crops into this folder.")
@click.option("--margin", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Extra margin of the square non-aligned crop, as a fraction of the box side.")
@click.option("--resume", is_flag=True, help="Skip photos already in --output (or its .partial file).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "torch"]), default="auto", show_default=True,
              help="What runs MTCNN: onnxruntime (CPU; nets exported once into the cache and checked against "
                   "PyTorch; one photo per CPU at once), torch; auto: onnxruntime on a CPU, torch on a GPU.")
@detector_options
def detect_cmd(inputs: tuple[str, ...], output: str, annotate_dir: str | None, crops_dir: str | None,
               margin: float, resume: bool, backend: str, device: str, batch_size: int, min_face_frac: float | None,
               min_face_px: float | None, thresholds: tuple[float, float, float] | None, factor: float | None,
               mtcnn_weights: str | None, max_pixels: int, progress: bool) -> int:
    """Detect faces in INPUTS (files, folders searched recursively, globs).

    Prints one JSON line per photo: file, width, height, faces (box, score, 5 landmarks), or the
    error that made the photo unreadable. The exit status is 1 when any photo failed.
    """
    paths = collect_paths(inputs)
    stems = output_stems(paths)
    made: dict[str, dict[Path, Path]] = {}
    if annotate_dir:
        made["--annotate"] = {p: Path(annotate_dir) / s.with_name(s.name + ".jpg") for p, s in stems.items()}
    if crops_dir:  # an input named like a crop, in the folder of a photo's crops, would be written over
        folders = {path_key(Path(crops_dir) / s): p for p, s in stems.items()}
        made["--crops"] = {folders[os.path.dirname(path_key(q))]: q for q in paths
                           if os.path.dirname(path_key(q)) in folders and _CROP_NAME.fullmatch(q.name)}
    refuse_outputs_over_inputs(paths, {"-o": output}, made)
    detector = build_detector(device, min_face_frac, min_face_px, thresholds, factor, mtcnn_weights,
                              use_bundle=False, backend=backend)
    sink = JsonlSink(output, resume=resume)
    todo = [p for p in paths if not sink.is_done(p)]
    n_faces = 0
    lock = threading.Lock()

    def handle(good: list[tuple[Path, np.ndarray]]) -> list[dict]:  # thread-safe: photos may come on several threads
        nonlocal n_faces
        records = []
        for (path, img), faces in zip(good, detector.detect([img for _, img in good])):
            with lock:
                n_faces += len(faces)
            records.append({"file": display_path(path), "width": int(img.shape[1]), "height": int(img.shape[0]),
                            "faces": [f.to_dict() for f in faces]})
            if annotate_dir:
                stem = stems[path]
                write_image(Path(annotate_dir) / stem.with_name(stem.name + ".jpg"), draw_faces(img, faces))
            if crops_dir and faces:
                _write_crops(Path(crops_dir) / stems[path], img, faces, margin)
        return records

    run = run_photos(todo, batch_size, max_pixels, sink, progress, handle, workers=photo_workers(detector.backend))
    click.echo(run.summary(n_faces, resume_note(sink, len(paths), len(todo)) if resume else ""), err=True)
    return 1 if run.failed else 0


def _write_crops(folder: Path, img: np.ndarray, faces: list[Face], margin: float) -> None:
    landmarks = np.stack([f.landmarks for f in faces])
    boxes = np.stack([f.box for f in faces])
    for k, (aligned, grey) in enumerate(zip(align_faces(img, landmarks), square_crops(img, boxes, margin=margin))):
        write_image(folder / f"face{k:03d}_aligned.png", aligned)
        write_image(folder / f"face{k:03d}_48.png", grey)
