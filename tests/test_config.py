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
