"""Files in and out, on a real filesystem: names that could leave /work are refused, a
symlink the code planted is never followed, a FIFO never blocks, and a request's files are
all written or none are; what a run leaves in /work/out comes back within the caps."""

from __future__ import annotations

import os
import pathlib
import threading

import pytest

from protocol.files import name_problem
from worker.files import OutDir, place


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/abs",
        "a/../b",
        "a/./b",
        "a//b",
        "",
        ".",
        "..",
        "a\\b",
        "x\x00y",
        "tab\there",
        "NUL",
        "com1.txt",
        ".cellblock-upload-0",
        "/".join(["d"] * 9),
    ],
)
def test_a_name_that_could_leave_work_or_mislead_is_refused(name: str) -> None:
    assert name_problem(name)


@pytest.mark.parametrize("name", ["data.csv", "in/put/a.json", "ünïcode.txt", "with space.txt", ".hidden"])
def test_an_ordinary_name_is_taken(name: str) -> None:
    assert name_problem(name) == ""


def test_files_are_written_under_work(tmp_path: pathlib.Path) -> None:
    assert place({"a.txt": b"alpha", "sub/dir/b.bin": b"\x00\x01"}, str(tmp_path)) == ""
    assert (tmp_path / "a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "sub" / "dir" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "sub"]  # no temporary name left


def test_a_symlinked_folder_is_not_followed(tmp_path: pathlib.Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "link").symlink_to(outside)
    problem = place({"ok.txt": b"1", "link/planted.txt": b"2"}, str(work))
    assert "could not be written" in problem
    assert list(outside.iterdir()) == []
    assert not (work / "ok.txt").exists(), "a request's files arrive all or none"


def test_a_symlink_at_the_name_is_not_written_through(tmp_path: pathlib.Path) -> None:
    work, target = tmp_path / "work", tmp_path / "target.txt"
    work.mkdir()
    target.write_text("untouched")
    (work / "f.txt").symlink_to(target)
    assert "not a regular file" in place({"f.txt": b"new"}, str(work))
    assert target.read_text() == "untouched" and (work / "f.txt").is_symlink()


def test_a_fifo_or_folder_at_the_name_is_refused_without_blocking(tmp_path: pathlib.Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(place({"pipe": b"x"}, str(tmp_path))))
    worker.start()
    worker.join(5)
    assert done and "not a regular file" in done[0]
    assert "not a regular file" in place({"folder": b"x"}, str(tmp_path))


def test_an_existing_file_is_replaced(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.txt").write_text("old")
    assert place({"a.txt": b"new"}, str(tmp_path)) == ""
    assert (tmp_path / "a.txt").read_text() == "new"


def test_out_returns_new_and_changed_regular_files_only(tmp_path: pathlib.Path) -> None:
    out = OutDir(str(tmp_path / "out"))
    out.make()
    root = tmp_path / "out"
    (root / "kept.txt").write_text("same")
    before = out.snapshot()
    (root / "new.png").write_bytes(b"\x89PNG")
    (root / "deep").mkdir()
    (root / "deep" / "x.csv").write_text("a,b\n")
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe")
    found, omitted = out.collect(before, each=1 << 20, total=1 << 20, count=10)
    assert [(a.name, a.media_type, a.data) for a in found] == [
        ("deep/x.csv", "text/csv", b"a,b\n"),
        ("new.png", "image/png", b"\x89PNG"),
    ]
    assert omitted == 0


def test_out_caps_each_file_the_total_and_the_count(tmp_path: pathlib.Path) -> None:
    out = OutDir(str(tmp_path))
    for i in range(5):
        (tmp_path / f"f{i}.bin").write_bytes(b"x" * 100)
    (tmp_path / "big.bin").write_bytes(b"y" * 1000)
    found, omitted = out.collect({}, each=500, total=250, count=4)
    by_name = {a.name: a for a in found}
    assert omitted == 2 and len(found) == 4
    assert by_name["big.bin"].dropped and by_name["big.bin"].size == 1000 and by_name["big.bin"].data == b""
    sent = [a for a in found if not a.dropped]
    assert sum(a.size for a in sent) <= 250 and len(sent) == 2


def test_out_replaced_by_a_symlink_is_not_followed(tmp_path: pathlib.Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("host file")
    (tmp_path / "out").symlink_to(elsewhere)
    found, _ = OutDir(str(tmp_path / "out")).collect({}, each=1 << 20, total=1 << 20, count=10)
    assert found == []
