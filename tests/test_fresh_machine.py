"""What a fresh machine needs: the default job runs without ffmpeg, the group command is umx's own
after the README's installs, and ffmpeg-bound features say in one line what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from umx.cli import GROUP
from umx.errors import LayoutError, UmxError


@pytest.fixture
def no_ffmpeg(tmp_path, monkeypatch):
    """PATH without ffmpeg and ffprobe (an empty folder)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return {**os.environ, "PATH": str(empty)}


def test_group_command_is_umx_own():
    """openunmix installs a `umx` script (its separator), which README command 2 installs after umx: the
    group has a name of its own, and runs umx's commands after both installs."""
    script = Path(sysconfig.get_path("scripts")) / GROUP
    assert script.is_file(), f"{script}: not installed (pip install -e .)"
    r = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Dataset layout options" in r.stdout and "--target" in r.stdout


def test_default_job_imports_nothing_that_needs_ffmpeg(tmp_path, no_ffmpeg):
    """synth → prep (trackfolder_fix and MUSDB18-HQ wav folders) → the per-track museval files, with no
    ffmpeg on PATH: stempeg (imported by musdb and museval) is never imported."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from umx import synth
        from umx.prep import prepare
        from umx.evaluate import museval_track_json, check_metrics
        base = Path({str(tmp_path)!r})
        fix = synth.write_layout("trackfolder_fix", base / "fix", n_train=2, n_valid=1, duration=1.0, seed=1)
        prepare("trackfolder_fix", fix, base / "s1", progress=False, target_file="vocals.wav",
                interferer_files=["bass.wav", "drums.wav", "other.wav"])
        mus = synth.write_layout("musdb", base / "mus", n_train=1, n_valid=1, duration=1.0, seed=2)
        prepare("musdb", mus, base / "s2", progress=False)
        museval_track_json({{"vocals": {{m: [1.0] for m in ("SDR", "SIR", "ISR", "SAR")}}}})
        check_metrics(["bssv4", "usdr"])
        bad = [m for m in ("stempeg", "musdb", "museval") if m in sys.modules]
        assert not bad, bad
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], env=no_ffmpeg, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_stem_files_without_ffmpeg_say_what_to_install(tmp_path, no_ffmpeg):
    from umx.layouts import musdb

    (tmp_path / "train").mkdir()
    with pytest.raises(LayoutError, match="apt-get install ffmpeg") as e:
        musdb.scan(tmp_path, is_wav=False)
    assert "\n" not in str(e.value)


def test_museval_metric_without_ffmpeg_says_what_to_install(no_ffmpeg):
    from umx.evaluate import check_metrics

    with pytest.raises(UmxError, match="apt-get install ffmpeg"):
        check_metrics(["museval"])
    assert check_metrics(["bssv4"]) == ("bssv4",)


def test_stem_decoding_without_ffmpeg_names_the_file(tmp_path, no_ffmpeg):
    from umx import audio

    path = tmp_path / "a.stem.mp4"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(UmxError, match=r"a\.stem\.mp4: .*ffmpeg.*not found on PATH"):
        audio.read_stems(path)


def test_readme_test_install_registers_the_plugin_architecture():
    """scripts/setup_tests.sh installs the suite's second architecture as a plugin, so the model seam's
    tests run (they skip only where a hand-made environment lacks it, never after README command 2)."""
    from umx.models import registry

    assert "tinymask" in registry.names(), "pip install --no-deps -e tests/plugins/umx_tinymask"
    r = subprocess.run([str(Path(sysconfig.get_path("scripts")) / GROUP), "train", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--arch tinymask options" in r.stdout and "--tiny-channels" in r.stdout
