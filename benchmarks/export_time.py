"""Wall time of ``edgeprune export SPEC --target executorch`` per spec (issue #13: a DeiT-S
model to .pte in under 30 s on 2 cores).

    python benchmarks/export_time.py [--specs deit_small,deit_small:spvit,...] [--repeat 1]

Each export runs as its own command, as a user runs it (a fresh process: imports,
torch.export, lowering, serialisation and the 16-input parity check in the ExecuTorch
runtime), timed from outside; the manifest's ``export_seconds`` splits the lowering.
Writes benchmarks/results/export_time.json and .md. Not part of the test run; run it on
a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import host_meta, write_results

from edgeprune.export.manifest import manifest_path

DEFAULT_SPECS = ",".join(
    ["deit_small"]
    + [f"deit_small:{m}" for m in ("spvit", "dynamicvit@0.7", "avit", "evit@0.7", "tome@r16")]
)


def export_once(spec: str, out: Path, extra: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, "-m", "edgeprune", "export", spec, "--target", "executorch", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--force"], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{spec}: export failed: {proc.stderr.strip()[-300:]}")
    manifest = json.loads(manifest_path(out).read_text())
    return {
        "wall_s": round(wall, 2),
        "export_seconds": manifest["export_seconds"],
        "segments": manifest["xnnpack"]["delegate_segments"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--specs", default=DEFAULT_SPECS)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--custom-kernels", action="store_true", help="export with --custom-kernels")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="export_time", help="stem of the .json/.md written")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for spec in args.specs.split(","):
            for i in range(args.repeat):
                extra = ("--custom-kernels",) if args.custom_kernels else ()
                r = export_once(spec, Path(td) / "m.pte", extra)
                rows.append({"spec": spec, "run": i, **r})
                print(
                    f"{spec:26s} wall {r['wall_s']:6.1f} s  lowering {r['export_seconds']}",
                    flush=True,
                )
    from importlib.metadata import version

    meta = {
        **host_meta(),
        "cores": os.cpu_count(),
        "runtime": f"executorch {version('executorch')}, torch {version('torch')}",
        "custom_kernels": args.custom_kernels,
    }
    lines = [
        "# `edgeprune export SPEC --target executorch`: wall time per command",
        "",
        f"{meta['runtime']}, {meta['machine']}, {meta['cores']} cores, {meta['date']}"
        + (", --custom-kernels." if args.custom_kernels else "."),
        "",
        "| spec | wall (s) | torch.export + rewrites | lowering | serialise | segments |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["export_seconds"]
        lines.append(
            f"| {r['spec']} | {r['wall_s']:.1f} | {e['export']:.1f} | {e['lower']:.1f} | "
            f"{e['serialize']:.1f} | {r['segments']} |"
        )
    write_results(args.out, args.name, {"meta": meta, "rows": rows}, lines)


if __name__ == "__main__":
    main()
