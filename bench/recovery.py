"""What resuming costs before the first video starts: the start-up repair (`manifest.recover`:
temp files, orphaned and incomplete parts, duplicate rows, each video's outcome) and the schema
check (`manifest.settle_schemas`: every part's Parquet footer) against the baseline of reading
every videos part's ids (all that resuming read before the repair existed), on one synthetic local
output measured in the same run. Also the writer lease's round trip.

    python bench/recovery.py [--parts 200] [--videos-per-part 64] [--clips-per-video 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curate import manifest  # noqa: E402
from curate.storage import Store  # noqa: E402


def build(root: Path, parts: int, videos: int, clips: int) -> None:
    """A finished output: `parts` part pairs of `videos` ok videos with `clips` clips each."""
    for p in range(parts):
        vrows, crows = [], []
        for v in range(videos):
            vid = f"{p:06d}{v:010d}"
            vrows.append({"video_id": vid, "source_uri": f"/data/{vid}.mp4", "status": "ok", "num_clips": clips,
                          "scenes": [[0, 250]], "attempts": 1})
            crows += [{"clip_id": f"{vid}_{c * 25:08d}_{c * 25 + 25:08d}", "video_id": vid, "source_uri": f"/data/{vid}.mp4",
                       "start_frame": c * 25, "end_frame": c * 25 + 25, "kept": True, "filter_reasons": [], "errors": []}
                      for c in range(clips)]
        name = f"part-bench0000-{p:05d}.parquet"
        for d, rows, schema in (("clips", crows, None), ("videos", vrows, manifest.VIDEOS_SCHEMA)):
            (root / d).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / d / name, compression="zstd")


def baseline(store: Store) -> set[str]:
    """Resume as 9029cbc did: list both directories and read every videos part's ids."""
    names = [n for n in store.list("videos") if n.endswith(".parquet")]
    store.list("clips")
    return {v for n in names for v in pq.read_table(io.BytesIO(store.read_bytes(f"videos/{n}")), columns=["video_id"]).column(0).to_pylist()}


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--videos-per-part", type=int, default=64)
    ap.add_argument("--clips-per-video", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        build(root, args.parts, args.videos_per_part, args.clips_per_video)
        store = Store(str(root))
        base_s, ids = timed(lambda: baseline(store), args.repeat)
        new_s, prior = timed(lambda: manifest.recover(store), args.repeat)
        assert set(prior.table.column("video_id").to_pylist()) == ids
        clips_schema = manifest.part_schema(store, f"clips/{manifest.committed_parts(store)[0]}")
        check_s, _ = timed(lambda: manifest.settle_schemas(store, clips_schema), args.repeat)
        lease_s, _ = timed(lambda: manifest.Lease(store).acquire().release(), args.repeat)
    videos = args.parts * args.videos_per_part
    print(f"command: python bench/recovery.py --parts {args.parts} --videos-per-part {args.videos_per_part} "
          f"--clips-per-video {args.clips_per_video} --repeat {args.repeat}")
    print(f"output: {args.parts} parts, {videos} videos, {videos * args.clips_per_video} clips (local disk)")
    print(f"baseline (read every videos part's ids): {base_s:.3f} s")
    print(f"recover (repair + outcome of every video): {new_s:.3f} s  ratio {new_s / base_s:.2f}x")
    print(f"schema check (every part's footer): {check_s:.3f} s  ratio {check_s / base_s:.2f}x")
    print(f"lease acquire + release: {lease_s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
