"""Wall time and result of the default search, from an empty study.

    python benchmarks/search_wall_time.py [--study mnist] [--trials 50] [--workers W] [--threads T]
                                          [--precision P] [--keep FILE.db]

Runs the study on a fresh SQLite file in a temp dir, or in a new file given with
--keep (the real studies/ is not touched), and prints wall time, best validation
accuracy, and the complete / pruned / failed counts, as the search issue's
acceptance asks.  --precision runs the study in another precision than its file's
(auto, fp32, bf16), to compare them.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from lenet_hpo.config import PRECISIONS
from lenet_hpo.search import run_search
from lenet_hpo.space import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="mnist")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=PRECISIONS, default=None, help="override the study's precision")
    ap.add_argument("--keep", type=Path, default=None, help="write the study to this new SQLite file and keep it")
    args = ap.parse_args()
    spec = load_spec(args.study)
    if args.keep is not None and args.keep.exists():
        ap.error(f"--keep: {args.keep} exists; give a new file so the benchmark starts from an empty study")
    with tempfile.TemporaryDirectory() as tmp:
        if args.precision is not None:  # a copy of the study file with [study] precision set (workers read the file)
            if "[study]\n" not in spec.text:
                ap.error(f"--precision: {spec.path} has no [study] table to set precision in")
            text = re.sub(r"^precision\s*=.*\n", "", spec.text, flags=re.MULTILINE)
            copy = Path(tmp) / f"{spec.name}.toml"
            copy.write_text(text.replace("[study]\n", f'[study]\nprecision = "{args.precision}"\n', 1))
            spec = load_spec(str(copy))
        url = f"sqlite:///{args.keep.resolve() if args.keep else Path(tmp) / 'bench.db'}"
        s = run_search(
            spec, url, args.trials, workers=args.workers, threads=args.threads, device=args.device, progress=True
        )
    print(
        f"study={spec.name} trials={args.trials} workers={s.workers} threads/worker={s.threads_per_worker}"
        f" cores={os.cpu_count()} precision={spec.precision}"
    )
    print(f"wall time      : {s.seconds:.0f} s ({s.seconds / 60:.1f} min)")
    print(f"best val acc   : {s.best_value:.4f} (trial {s.best_number})")
    print(f"baseline trial : {s.baseline_value}")
    print(f"complete/pruned/failed: {s.n_complete}/{s.n_pruned}/{s.n_failed}")


if __name__ == "__main__":
    main()
