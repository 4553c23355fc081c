"""Real-size families: export peak RSS, per-stage parity, bundle size and per-frame runtime cost.

For each fixture (vrex_edge.testing.checkpoints: the published configs with random weights) this
writes the checkpoint once, exports it in a child process (so each export's peak RSS is its own),
and streams frames through StreamSession in another child process (per-frame latency, peak RSS).
The export child also samples its resident memory every 20 ms and reports the stages where it peaked.

    python benchmarks/bench_families_realsize.py --fixtures smolvlm2-256m,smolvlm2-500m --dtype int8 \\
        --cache .cache/realsize --out benchmarks/results/families_realsize.md

`--layers N` truncates the LM to N decoder layers (a layer-limited run of a model too big to export whole).
Results append to `--out` as a markdown table with the command line and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPORT = """
import json, sys, threading, time
from vrex_edge.export import export_bundle
stage, peaks = ["load"], {}
def sample():  # resident memory every 20 ms, kept per stage (the part of the export that reached it)
    while True:
        kb = [int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS")][0]
        peaks[stage[0]] = max(peaks.get(stage[0], 0), kb * 1024)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
def say(m):
    if m.startswith("exporting "):
        stage[0] = m.split()[1]
    print(time.strftime("%H:%M:%S"), m, flush=True)
r = export_bundle(sys.argv[1], sys.argv[2], dtype=sys.argv[3], force=True, progress=say)
top = dict(sorted(peaks.items(), key=lambda kv: -kv[1])[:4])
print("REPORT " + json.dumps({"peak_rss_bytes": r.peak_rss_bytes, "seconds": r.seconds, "bytes": r.total_bytes,
                              "stage_peaks": top}))
"""

STREAM = """
import json, resource, sys, time
import numpy as np
from vrex_edge.runtime.engine import load_model
from vrex_edge.runtime.session import StreamSession
model = load_model(sys.argv[1], threads=int(sys.argv[3]))
s = StreamSession(model, speak_threshold=0.0, max_reply_tokens=4)
rng = np.random.default_rng(0)
ms = []
for i in range(int(sys.argv[2])):
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # a VGA BGR frame
    t = time.perf_counter()
    list(s.push_frame(frame, float(i)))
    ms.append(1000 * (time.perf_counter() - t))
t = time.perf_counter()
list(s.ask("what is the person doing now ?", float(len(ms))))
ask = 1000 * (time.perf_counter() - t)
rss = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS")][0]
print("REPORT " + json.dumps({"frame_ms": ms, "ask_ms": ask, "rss_bytes": rss,
                              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _child(code: str, *args: str, log: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:  # progress lines and errors, as they come
        done = subprocess.run([sys.executable, "-c", code, *args], env=env, stdout=f, stderr=subprocess.STDOUT)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("REPORT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({done.returncode}); see {log}")
    return json.loads(lines[-1][len("REPORT ") :])


def parity_summary(bundle: Path) -> dict[str, float]:
    """Worst max-abs-error / (1 + max |reference|) per stage kind, from the manifest's parity notes."""
    m = json.loads((bundle / "manifest.json").read_text())
    p = m["notes"]["parity"]
    out: dict[str, float] = {}
    for key, err in p["max_abs_error"].items():
        kind = key.split(".")[-1] if key.startswith("layers.") else key
        out[kind] = max(out.get(kind, 0.0), err / (1.0 + p["max_abs_reference"][key]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default="smolvlm2-256m")
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "realsize")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-stream", action="store_true", help="export only")
    ap.add_argument("--reuse", action="store_true", help="keep a bundle exported by an earlier run (and its report)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from vrex_edge.testing.checkpoints import FIXTURES, write_fixture

    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.fixtures.split(","):
        tag = name if args.layers is None else f"{name}-L{args.layers}"
        t = time.perf_counter()
        src = write_fixture(name, args.cache / "fixtures", layers=args.layers)
        fixture_s = time.perf_counter() - t
        bundle = args.cache / "bundles" / f"{tag}-{args.dtype}"
        saved = logs / f"export-{tag}-{args.dtype}.json"
        if args.reuse and saved.is_file() and (bundle / "manifest.json").is_file():
            exp = json.loads(saved.read_text())
        else:
            exp = _child(EXPORT, str(src), str(bundle), args.dtype, log=logs / f"export-{tag}-{args.dtype}.log")
            saved.write_text(json.dumps(exp))
        row = {
            "fixture": tag,
            "hub_id": FIXTURES[name].hub_id,
            "dtype": args.dtype,
            "fixture_s": fixture_s,
            "export": exp,
            "parity": parity_summary(bundle),
        }
        if not args.no_stream:
            row["stream"] = _child(
                STREAM, str(bundle), str(args.frames), str(args.threads), log=logs / f"stream-{tag}-{args.dtype}.log"
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write_table(args.out, rows, " ".join(sys.argv))


def write_table(out: Path, rows: list[dict], command: str) -> None:
    load = os.getloadavg()
    lines = [
        f"\n### `{command}`\n",
        f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 cores, shared with other jobs).\n",
        "| fixture | dtype | export peak RSS | export s | bundle MB | median ms / frame | ask ms (4 tokens) "
        "| stream RSS | worst stage error (rel.) | export RSS peaked in |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, p = r["export"], r["parity"]
        worst = ", ".join(f"{k} {v:.1e}" for k, v in sorted(p.items()))
        s = r.get("stream")
        if s:
            fr = sorted(s["frame_ms"][1:] or s["frame_ms"])
            med = f"{fr[len(fr) // 2]:.0f}"
            ask, rss = f"{s['ask_ms']:.0f}", f"{s['peak_rss_bytes'] / 2**30:.2f} GiB"
        else:
            med = ask = rss = "-"
        where = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in e.get("stage_peaks", {}).items()) or "-"
        lines.append(
            f"| {r['fixture']} | {r['dtype']} | {e['peak_rss_bytes'] / 2**30:.2f} GiB | {e['seconds']:.0f} "
            f"| {e['bytes'] / 1e6:.0f} | {med} | {ask} | {rss} | {worst} | {where} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
