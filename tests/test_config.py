import os
import re
import subprocess
import sys

import pytest

from curate.config import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


BASE = "input:\n  paths: [x.mp4]\noutput:\n  path: out\n"


def test_valid_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["clips.min_duration_s=3", "shots.detector=content", "input.paths=[a, b]"])
    assert cfg.clips.min_duration_s == 3.0
    assert cfg.shots.detector == "content"
    assert cfg.input.paths == ["a", "b"]


def test_bare_off_means_off(tmp_path):
    """YAML 1.1 reads a bare `off` as false; the config loader keeps it the word, in the file and in --set."""
    cfg = load_config(write(tmp_path, BASE + "stages:\n  quality:\n    mode: off\n"), ["stages.motion.mode=off"])
    assert cfg.build_stages() == []  # both off: not built, and no error
    with pytest.raises(ConfigError, match="stages.quality.mode"):
        load_config(write(tmp_path, BASE + "stages:\n  quality:\n    mode: true\n")).build_stages()


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "clips:\n  min_durtion_s: 2\n", "clips.min_durtion_s: unknown key"),
        (BASE + "clips:\n  min_duration_s: soon\n", "clips.min_duration_s: Input should be a valid number"),
        ("output:\n  path: out\n", "input: required key is missing"),
        (BASE + "shots:\n  detector: magic\n", "shots.detector: Input should be"),
        (BASE + "stages:\n  motoin: {}\n", "stages.motoin: unknown stage"),
        (BASE + "clips:\n  min_duration_s: 5\n  max_duration_s: 2\n", "clips: Value error, max_duration_s must be >= min_duration_s"),
        ("input: [\n", "invalid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_exits_2_before_ray(tmp_path):
    p = write(tmp_path, BASE + "clips:\n  bogus: 1\n")
    r = subprocess.run([sys.executable, "-m", "curate", "run", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == ["curate: error: clips.bogus: unknown key"]
    assert "ray" not in r.stdout.lower()


def test_cli_missing_input_file(tmp_path):
    p = write(tmp_path, "input:\n  paths: [does/not/exist.mp4]\noutput:\n  path: out\n")
    r = subprocess.run([sys.executable, "-m", "curate", "run", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "input.paths[0]: 'does/not/exist.mp4' does not exist" in r.stderr


def test_shard_section_is_validated(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "shard:\n  target_size: 64MB\n"))
    assert cfg.shard_config().target_size == 64_000_000
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE + "shard:\n  bogus: 1\n"))
    assert str(e.value) == "shard.bogus: unknown key"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "clips:\n  max_duration_s: .inf\n", "clips.max_duration_s: Input should be a finite number"),
        (BASE + "frames:\n  motion_fps: .nan\n", "frames.motion_fps: Input should be a finite number"),
        (BASE + "shots:\n  threshold: -1\n", "shots.threshold: Input should be greater than or equal to 0"),
        (BASE + "clips:\n  preset: warp\n", "clips.preset: Input should be 'ultrafast'"),
        (BASE + "stages:\n  quality:\n    batch_size: -1\n", "stages.quality.batch_size: Input should be greater than or equal to 1"),
        (BASE + "stages:\n  motion:\n    min_score: .inf\n", "stages.motion.min_score: Input should be a finite number"),
        ("input:\n  paths: [x.mp4]\noutput:\n  path: ''\n", "output.path: Value error, must name a directory"),
        ("input:\n  paths: [x.mp4]\noutput:\n  path: 's3:///prefix'\n", "output.path: Value error, 's3:///prefix' names no bucket"),
        pytest.param("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "invalid YAML (nested deeper than 32 levels, line 1 column 35)",
                     id="100k-deep"),
    ],
)
def test_slips_are_caught_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_every_numeric_field_of_every_section_and_stage_is_bounded_and_finite():
    """The kind, not the examples: a stage that redeclares a base field (its own default batch size)
    keeps the base's bound, and no float anywhere takes inf or NaN."""
    from pydantic import BaseModel, ValidationError

    from curate.config import STAGE_CLASSES, PipelineConfig, stage_class
    from curate.stage import Stage

    def sections(model: type[BaseModel]):
        yield model
        for f in model.model_fields.values():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                yield from sections(f.annotation)

    def floats(model: type[BaseModel]) -> list[str]:
        return [n for n, f in model.model_fields.items() if "float" in str(f.annotation)]

    stages = [stage_class(n) for n in STAGE_CLASSES]
    for model in [*sections(PipelineConfig), *stages]:
        for name in floats(model):
            with pytest.raises(ValidationError, match=name):
                model.model_validate({name: float("inf")})
    for cls in stages:
        for name in set(Stage.model_fields) - {"mode"}:  # -1 breaks every base bound (ge=1, gt=0, ge=0)
            with pytest.raises(ValidationError, match=f"{name}\n  Input should be greater"):
                cls.model_validate({name: -1})
    # Every number a stage declares of its own has a sign or range bound (a threshold below a
    # score's range would silently pass or drop everything).
    unbounded = [
        f"{cls.__name__}.{name}" for cls in stages for name, f in cls.model_fields.items()
        if name not in Stage.model_fields and re.search(r"\b(int|float)\b", str(f.annotation))
        and not any(type(m).__name__ in ("Ge", "Gt", "Le", "Lt", "Interval") for m in f.metadata)
    ]
    assert unbounded == []


def test_unreadable_pipeline_and_set_values_are_one_line(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value) == f"{bad}: not UTF-8 text (byte 0xe9 at offset {len(BASE) + 5})"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE), ["clips.max_duration_s=[1"])
    assert str(e.value).startswith("--set clips.max_duration_s: invalid YAML value (expected ',' or ']'")
    with pytest.raises(ConfigError, match=r"--set \.x=1: '\.x' is not a key path"):
        load_config(write(tmp_path, BASE), [".x=1"])


def test_output_home_is_expanded(tmp_path):
    cfg = load_config(write(tmp_path, "input:\n  paths: [x.mp4]\noutput:\n  path: ~/curate-out\n"))
    assert cfg.output.path == os.path.join(os.path.expanduser("~"), "curate-out")


@pytest.mark.parametrize(
    "extra, args, message",
    [
        ("stages:\n  text:\n    batch_size: -4\n", [], "stages.text.batch_size: Input should be greater than or equal to 1"),
        ("", ["--set", "k=[1"], "--set k: invalid YAML value"),
        ("clips:\n  max_duration_s: .inf\n", [], "clips.max_duration_s: Input should be a finite number"),
    ],
)
def test_cli_slips_exit_2_in_one_line_before_ray(tmp_path, extra, args, message):
    p = write(tmp_path, BASE + extra)
    r = subprocess.run([sys.executable, "-m", "curate", "run", str(p), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("curate: error: ") and message in lines[0], lines
    assert "ray" not in r.stdout.lower()
