"""Faults and mistakes real users make, on real footage, real Ray and real files: concurrent runs,
killed runs, damaged outputs, failed sources and clips, unusable or full outputs, hostile names."""

from __future__ import annotations

from pathlib import Path

import pytest
from footage import cut_video

from curate.engine import StageRunner, manifest_schema
from curate.record import to_table, video_id_for
from curate.transcode import TranscodeStage


@pytest.fixture(scope="module")
def clips3(tmp_path_factory) -> list[Path]:
    """Three small videos of two or three shots (1.2-2 s each)."""
    d = tmp_path_factory.mktemp("clips3")
    out = []
    for i, lengths in enumerate([[30, 40], [35, 30, 30], [50]]):
        out.append(d / f"v{i}.mp4")
        cut_video(out[-1], lengths, w=160, h=96)
    return out


# ---------------------------------------------------------------- stage failures are per clip


def test_a_clip_that_fails_in_a_stage_fails_alone(tmp_path, clips3):
    """A batch with one bad window (past the end of the video): the other clips are written."""
    uri = str(clips3[1])
    vid = video_id_for(uri)
    windows = [(0, 35), (35, 65), (400, 430)]
    recs = [{"clip_id": f"{vid}_{s:08d}_{e:08d}", "video_id": vid, "source_uri": uri, "path": uri, "start_frame": s,
             "end_frame": e, "num_frames": e - s, "fps": 25.0, "kept": True} for s, e in windows]
    stage = TranscodeStage(output=str(tmp_path / "out"), batch_size=3)
    schema = manifest_schema([stage], transient=True)
    out = StageRunner(stage, schema)(to_table(recs, schema)).to_pylist()
    assert [bool(r["errors"]) for r in out] == [False, False, True]
    assert out[2]["errors"] == [f"transcode: RuntimeError: no frames decoded in [400, 430) of {uri}"]
    for r in out[:2]:
        assert r["path"] == str(tmp_path / "out" / "media" / vid / f"{r['clip_id']}.mp4") and Path(r["path"]).stat().st_size
    assert out[2]["path"] == uri
