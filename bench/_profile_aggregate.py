"""Aggregate a py-spy profile of the flow into per-stage shares and hot spots (bench/profiles.md).

usage: python bench/_profile_aggregate.py PROFILE.raw RESULT.txt
  PROFILE.raw  `py-spy record --format raw -o PROFILE.raw -- python <script running build_personas>`
               (collapsed stacks: "frame;frame;... count", a frame being "function (file:line)")
  RESULT.txt   that script's stdout, with a line "RESULT{json}" holding the run record's
               `total_seconds` and `timings` (seconds per stage)
Prints a markdown table: per stage its wall seconds, its share of the flow thread's samples and its
top three hot spots (the library function on top of the stack, in the project function that called
it, as a share of the stage's samples). Samples of other threads (Prefect's event loop, heartbeats)
are left out: only stacks through `build_personas` count.
"""

from __future__ import annotations

import collections
import json
import re
import sys

STAGES = ["ingest", "resolve", "features", "quality", "train", "publish", "intents", "graph", "flags", "monitor"]
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
PROJECT = re.compile(r"^(personaops|models|monitoring|flows)/")
PLUMBING = {"build_personas", "_build", "_timed"}


def short(path: str) -> str:
    for root in ("/work/main/", "site-packages/"):
        if root in path:
            return path.split(root, 1)[1]
    return path


def stacks(path: str):
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = []
            for text in stack.split(";"):
                m = FRAME.match(text)
                frames.append((m["fn"], short(m["file"])) if m else (text, ""))
            yield frames, int(count)


def table(profile: str, result: str) -> str:
    line = next(x for x in open(result, encoding="utf-8") if x.startswith("RESULT"))
    record = json.loads(line[len("RESULT"):])
    per_stage, spots, flow = collections.Counter(), collections.defaultdict(collections.Counter), 0
    for frames, n in stacks(profile):
        if not any(fn == "build_personas" and f.startswith("flows/") for fn, f in frames):
            continue  # another thread
        flow += n
        stage = next((fn for fn, f in frames if fn in STAGES and f == "flows/build_personas.py"), "outside stages")
        per_stage[stage] += n
        ours = [(fn, f) for fn, f in frames if PROJECT.match(f) and not (f == "flows/build_personas.py" and fn in PLUMBING)]
        leaf, via = frames[-1], (ours[-1] if ours else None)
        if via == leaf:
            key = f"`{via[0]}` ({via[1]}) itself"
        else:
            key = f"`{leaf[0]}` ({leaf[1].split('/')[0] or '?'})" + (f" in `{via[0]}`" if via else "")
        spots[stage][key] += n
    timings = record["timings"]
    rows = ["| stage | wall s | share of the flow thread's samples | top hot spots (share of the stage's samples; library function, in the project function that calls it) |",
            "|---|---:|---:|---|"]
    for stage in [*timings, "outside stages"]:
        n = per_stage.get(stage, 0)
        if not n:
            continue
        seconds = timings[stage]["seconds"] if stage in timings else record["total_seconds"] - sum(v["seconds"] for v in timings.values())
        top = "; ".join(f"{k} {100 * m / n:.0f}%" for k, m in spots[stage].most_common(3))
        rows.append(f"| {stage} | {seconds:,.1f} | {100 * n / flow:.1f}% | {top} |")
    rows.append(f"| **whole flow** | {record['total_seconds']:,.1f} | {flow:,} samples | |")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(table(sys.argv[1], sys.argv[2]))
