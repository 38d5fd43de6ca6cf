"""Scoring sanity: does each score separate the clips it is meant to find?

- `text_area_ratio` (filters/text_overlay.py, OCR): clips of real footage with burned-in text
  (subtitles, captions, a news band, a small corner watermark) against the same clips without,
  and against clips whose only text is scene text (a sign in the scene, the camera panning).
- `scene_text_area_ratio` (the same stage): those scene-text clips against the clean and the
  overlay clips. A static camera filming a static sign, which the stage cannot tell from an
  overlay, is shown apart: where its scores land.
- `motion_score` (filters/motion.py, optical flow): moving clips (real footage, camera pans over a
  still) against frozen ones (one real frame held, clean or with sensor-like noise).

Every clip is written as an mp4 and goes through the pipeline's own decode pass (split_video) and
the stage's process_batch, so the scores are those a run would write. AUC is the probability that a
clip with text (or motion) scores higher than one without (Mann-Whitney); the stage's default
threshold is also shown as caught / wrongly flagged shares.

    python bench/scoring_auc.py [--clips 24] [--cache DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time

import av
import cv2
import numpy as np

W, H, N = 480, 270, 50  # clip size and length (2 s at 25 fps)


def auc(pos: list[float], neg: list[float]) -> float:
    p, n = np.array(pos)[:, None], np.array(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def footage_clips(count: int, cache: str | None, rng) -> list[list[np.ndarray]]:
    """`count` stretches of N frames of real footage, no cut inside, at W x H (RGB)."""
    from curate.shot_corpus import sources

    decoded = {}
    for s in sources(cache):
        with av.open(s.path) as c:
            frames = [f.to_ndarray(format="rgb24", width=W, height=H) for f in c.decode(video=0)]
        decoded[s.name] = (frames, s)
    out = []
    names = sorted(decoded)
    while len(out) < count:
        frames, src = decoded[names[len(out) % len(names)]]
        a = int(rng.integers(src.skip_head, len(frames) - N))
        if any(a < c < a + N for c in src.cuts):
            continue
        out.append(frames[a : a + N])
    return out


def draw_text(frames: list[np.ndarray], style: str, rng) -> list[np.ndarray]:
    """Burn a text overlay into every frame, in one of the ways video carries text."""
    words = ["we will meet again tomorrow", "BREAKING NEWS: markets rally", "Chapter 3 - The Harbour",
             "subscribe for more videos", "Interview with the director", "(c) 2024 Example Studio"]
    text = words[int(rng.integers(len(words)))]
    out = []
    for f in frames:
        im = f.copy()
        if style == "subtitle":
            scale = 0.8
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
            org = ((W - tw) // 2, int(H * 0.9))
            cv2.putText(im, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 5, cv2.LINE_AA)
            cv2.putText(im, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
        elif style == "caption":
            cv2.putText(im, text, (12, 34), cv2.FONT_HERSHEY_DUPLEX, 0.9, (255, 230, 0), 2, cv2.LINE_AA)
        elif style == "band":
            im[H - 44 : H - 8] = (im[H - 44 : H - 8] * 0.3 + np.array([20, 30, 120]) * 0.7).astype(np.uint8)
            cv2.putText(im, text.upper(), (10, H - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        else:  # a small, half-transparent corner watermark: the hard case
            layer = im.copy()
            cv2.putText(layer, "example.tv", (W - 130, H - 14), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
            im = cv2.addWeighted(layer, 0.6, im, 0.4, 0)
        out.append(im)
    return out


def pan(frame: np.ndarray, speed: float) -> list[np.ndarray]:
    """A camera pan over one real frame: crops of a 2x enlargement moving `speed` (<= 9) pixels a frame."""
    return pan_over(cv2.resize(frame, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC), speed)


def pan_over(big: np.ndarray, speed: float) -> list[np.ndarray]:
    x0 = (W - speed * N) / 2
    return [np.ascontiguousarray(big[H // 2 : H // 2 + H, int(x0 + speed * i) : int(x0 + speed * i) + W]) for i in range(N)]


def draw_sign(img: np.ndarray, cx: int, cy: int, scale: float, rng) -> None:
    """A shop sign in the scene: a plate with a border and a word, centred at (cx, cy)."""
    words = ["BAKERY", "PHARMACY", "TAXI", "HOTEL CENTRAL", "OPEN 24H", "BUS STOP", "CAFE ROMA", "PARKING"]
    text = words[int(rng.integers(len(words)))]
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, 2)
    plate, ink = ((30, 60, 160), (250, 250, 240)) if rng.random() < 0.5 else ((240, 230, 200), (20, 20, 20))
    x0, y0 = cx - tw // 2 - th, cy - th
    cv2.rectangle(img, (x0, y0), (x0 + tw + 2 * th, y0 + 2 * th), plate, -1)
    cv2.rectangle(img, (x0, y0), (x0 + tw + 2 * th, y0 + 2 * th), (90, 90, 90), 2)
    cv2.putText(img, text, (cx - tw // 2, cy + th // 2), cv2.FONT_HERSHEY_DUPLEX, scale, ink, 2, cv2.LINE_AA)


def sign_pan(frame: np.ndarray, speed: float, rng) -> list[np.ndarray]:
    """Scene text on a moving camera: a sign painted into one real frame, then `pan` over it; the
    sign sits where the middle of the pan looks, so it crosses the picture with the scene."""
    big = cv2.resize(frame, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC)
    cx = int((W - speed * N) / 2 + speed * N / 2 + W * rng.uniform(0.3, 0.7))
    draw_sign(big, cx, int(H / 2 + H * rng.uniform(0.3, 0.7)), float(rng.uniform(0.7, 1.1)), rng)
    return pan_over(big, speed)


def frozen(frame: np.ndarray, noise: float, rng) -> list[np.ndarray]:
    return [np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8) if noise else frame.copy() for _ in range(N)]


def records(clips: list[list[np.ndarray]], tmp: str) -> list[dict]:
    """One clip record per clip, from the pipeline's own decode pass over an mp4 of it."""
    from curate.config import PipelineConfig
    from curate.shot_corpus import write_mp4
    from curate.split import split_video

    cfg = PipelineConfig.model_validate(
        {"input": {"paths": ["-"]}, "output": {"path": "-"}, "shots": {"detector": "stride", "stride_s": 100},
         "clips": {"min_duration_s": 1.0, "max_duration_s": 10.0}}
    )
    out = []
    for i, frames in enumerate(clips):
        path = f"{tmp}/c{i:03d}.mp4"
        write_mp4(path, frames, crf=20)
        recs = [r for r in split_video(path, path, cfg) if r["clip_id"] is not None]
        assert len(recs) == 1, path
        out.append(recs[0])
    return out


def score(stage, recs: list[dict], column: str, *more: str) -> tuple:
    """The stage's `column` (and `more` columns) over the records, then the seconds it took."""
    t = time.perf_counter()
    done = [r for i in range(0, len(recs), stage.batch_size) for r in stage.process_batch(recs[i : i + stage.batch_size])]
    return (*([r[c] for r in done] for c in (column, *more)), time.perf_counter() - t)


def main(argv=None) -> int:
    from filters.motion import MotionStage
    from filters.text_overlay import TextOverlayStage

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=24, help="clips per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="where opencv-doc's sample videos are kept (default: the corpus cache)")
    args = p.parse_args(argv)
    print("command: python bench/scoring_auc.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    rng = np.random.default_rng(args.seed)
    base = footage_clips(args.clips, args.cache, rng)

    with tempfile.TemporaryDirectory(prefix="curate-auc-") as tmp:
        styles = ["subtitle", "caption", "band", "watermark"]
        with_text = [draw_text(c, styles[i % len(styles)], rng) for i, c in enumerate(base)]
        stage = TextOverlayStage()
        stage.setup()
        pos, pos_scene, t1 = score(stage, records(with_text, tmp), "text_area_ratio", "scene_text_area_ratio")
        neg, neg_scene, t2 = score(stage, records(base, tmp), "text_area_ratio", "scene_text_area_ratio")
        limit = stage.max_area_ratio
        print(f"\ntext_area_ratio: {len(pos)} clips with text vs {len(neg)} without: AUC {auc(pos, neg):.3f}"
              f"  ({(len(pos) + len(neg)) / (t1 + t2):.1f} clips/s)")
        print(f"  default rule text_area_ratio <= {limit}: flags {np.mean(np.array(pos) > limit):.0%} of clips with text,"
              f" {np.mean(np.array(neg) > limit):.0%} of clips without")
        for s in styles:
            vals = [v for i, v in enumerate(pos) if styles[i % len(styles)] == s]
            print(f"  {s:<10} AUC {auc(vals, neg):.3f}, flagged {np.mean(np.array(vals) > limit):.0%}")

        # Scene text, from its own generator so the figures above and below stay as they were.
        srng = np.random.default_rng(args.seed + 1)
        scene = [sign_pan(c[int(srng.integers(N))], float(srng.uniform(1, 6)), srng) for c in base]
        static_sign = []
        for c in base:
            still = c[N // 2].copy()
            draw_sign(still, int(W * srng.uniform(0.3, 0.7)), int(H * srng.uniform(0.3, 0.7)), float(srng.uniform(0.35, 0.55)), srng)
            static_sign.append(frozen(still, 3.0, srng))
        sc_overlay, sc_scene, t3 = score(stage, records(scene, tmp), "text_area_ratio", "scene_text_area_ratio")
        st_overlay, st_scene, _ = score(stage, records(static_sign, tmp), "text_area_ratio", "scene_text_area_ratio")
        print(f"  overlays vs clean and scene-text clips ({len(neg) + len(sc_overlay)}): AUC {auc(pos, neg + sc_overlay):.3f};"
              f" the rule flags {np.mean(np.array(sc_overlay) > limit):.0%} of scene-text clips"
              f" ({len(sc_overlay) / t3:.1f} clips/s on them)")
        print(f"\nscene_text_area_ratio: {len(sc_scene)} clips of a sign on a panning camera vs {len(neg_scene) + len(pos_scene)}"
              f" without scene text (clean, overlays): AUC {auc(sc_scene, neg_scene + pos_scene):.3f};"
              f" scene text found in {np.mean(np.array(sc_scene) > 0):.0%} of them,"
              f" in {np.mean(np.array(neg_scene + pos_scene) > 0):.0%} of the others")
        print(f"  static camera, static sign ({len(st_overlay)} clips, ambiguous): counted as overlay in"
              f" {np.mean(np.array(st_overlay) > 0):.0%} (flagged {np.mean(np.array(st_overlay) > limit):.0%}),"
              f" as scene text in {np.mean(np.array(st_scene) > 0):.0%}, found in neither {np.mean((np.array(st_overlay) == 0) & (np.array(st_scene) == 0)):.0%}")

        moving = [c if i % 2 == 0 else pan(c[0], float(rng.uniform(1, 6))) for i, c in enumerate(base)]
        still = [frozen(c[N // 2], 3.0 if i % 2 else 0.0, rng) for i, c in enumerate(base)]
        stage = MotionStage()
        stage.setup()
        pos, t1 = score(stage, records(moving, tmp), "motion_score")
        neg, t2 = score(stage, records(still, tmp), "motion_score")
        limit = stage.min_score
        print(f"\nmotion_score: {len(pos)} moving clips (real footage, pans) vs {len(neg)} frozen (clean, noisy): "
              f"AUC {auc(pos, neg):.3f}  ({(len(pos) + len(neg)) / (t1 + t2):.1f} clips/s)")
        print(f"  default rule motion_score >= {limit}: drops {np.mean(np.array(pos) < limit):.0%} of moving clips,"
              f" {np.mean(np.array(neg) < limit):.0%} of frozen ones")
        real = [v for i, v in enumerate(pos) if i % 2 == 0]
        print(f"  real footage only: AUC {auc(real, neg):.3f}, lowest moving {min(pos):.4f}, highest frozen {max(neg):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
