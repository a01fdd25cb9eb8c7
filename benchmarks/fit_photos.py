"""Write the shipped bundle's list of the photos its models and fusion were fitted on (sha256 per photo file).

``groupmood evaluate-groups`` reads it (the bundle's ``chosen_on.fit_photos``) and says how many of the photos
it evaluates were seen in fitting, and by what, so an in-sample figure is never mistaken for a held-out one:

* ``group``: multiemova-dev, every photo: the group head, every temperature but the fallback's, the fusion
  weights (their held-out figure is the nested CV in ``chosen_on``);
* ``global-train``: the sentiment sets' training splits (``configs/splits/global``): the whole-image model;
* ``global-val``: the sentiment sets' validation splits: the whole-image model's choice of epoch and the
  fallback temperature (fitted on its photos with fewer than two faces).

Usage: ``.venv/bin/python benchmarks/fit_photos.py [--shared ../shared/data]`` (rewrites the assets file).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from groupmood.data.groups import read_emotion6, read_image_csv, read_sentibank, read_you2015
from groupmood.engine.group_eval import FIT_ROLES, write_fit_photos

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "groupmood" / "assets" / "fit_photos.tsv"
GLOBAL_SOURCES = {"twitter_you2015": ("twitter-you2015", read_you2015),
                  "twitter_sentibank603": ("twitter-sentibank603", read_sentibank),
                  "emotion6": ("emotion6", read_emotion6)}


def fitted_photos(shared: Path) -> list[tuple[Path, str]]:
    """(photo file, role) for every photo the shipped bundle was fitted on."""
    out = [(p, "group") for p in read_image_csv(shared / "multiemova-dev").paths]
    for source, (folder, reader) in GLOBAL_SOURCES.items():
        table = reader(shared / folder)
        split = json.loads((REPO / "configs" / "splits" / "global" / f"{source}.json").read_text())["splits"]
        by_name = dict(zip(map(str, table.names), table.paths))
        for part, role in (("train", "global-train"), ("val", "global-val")):
            out += [(by_name[name], role) for name in split[part]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    photos = fitted_photos(args.shared)
    write_fit_photos(args.out, photos)
    counts = {role: sum(r == role for _, r in photos) for role in FIT_ROLES}
    print(f"wrote {args.out}: {len(photos)} photos ({', '.join(f'{r} {n}' for r, n in counts.items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
