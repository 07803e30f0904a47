import os

import pytest

from training.experiment.paths import dir_problem, file_problem, inside, name_problem


def test_file_problems_are_named_without_opening(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text("{}\n")
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert file_problem(good) is None
    assert file_problem(tmp_path / "none") == "no such file"
    assert file_problem(tmp_path) == "a directory, not a file"
    assert file_problem(fifo) == "a FIFO (named pipe), not a regular file"
    assert file_problem(loop) == "a symlink loop (too many levels of symbolic links)"
    assert file_problem(good / "x") == "no such file (a parent of it is not a directory)"


def test_dir_problems(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert dir_problem(tmp_path / "new" / "deeper") is None  # made when needed
    assert dir_problem(a_file) == "not a directory"
    assert dir_problem(a_file / "sub") == "a parent of it is a file, not a directory"


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/abs", "", ".hidden", "-rf",
                                  "x" * 129, "a\nb", "a b"])
def test_names_that_would_leave_the_folder_are_refused(name):
    assert name_problem(name)


@pytest.mark.parametrize("name", ["pair-1", "test-pair-ee492bca30", "A.b_c-1"])
def test_plain_names_pass(name):
    assert name_problem(name) is None


def test_inside_resolves_symlinks(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "escape").symlink_to(tmp_path)
    assert inside(tmp_path / "out" / "p", tmp_path / "out")
    assert not inside(tmp_path / "out" / "escape", tmp_path / "out")
