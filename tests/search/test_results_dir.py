"""A results folder the search could not write is refused before any cache is built or Ray is started: one line
naming the key, what was found and what is allowed, exit status 2, nothing written."""

from __future__ import annotations

import pytest

from builders import tiny_search_overrides
from raysearch_adapters.commands.main import main


def _search(search_data, tmp_path, capsys, results_dir, name="dir"):
    corpus, checkpoint, _ = search_data
    cache = tmp_path / "cache"
    status = main(["search", *tiny_search_overrides(corpus, checkpoint, cache, results_dir, name)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert not cache.exists()  # refused before the feature caches were built
    return err


def test_a_results_dir_that_is_a_file_is_refused_naming_the_key(search_data, tmp_path, capsys):
    file = tmp_path / "results"
    file.write_text("not a folder")
    err = _search(search_data, tmp_path, capsys, file)
    assert f"error: results.dir: {file} is a file, not a folder; results.dir/search.name ({file / 'dir'}) must be" in err
    deeper = _search(search_data, tmp_path, capsys, file / "sub")
    assert f"results.dir: {file} is a file, not a folder" in deeper
    assert file.read_text() == "not a folder"


def test_a_search_name_longer_than_the_file_system_takes_is_refused(search_data, tmp_path, capsys):
    name = "n" * 300
    err = _search(search_data, tmp_path, capsys, tmp_path / "results", name=name)
    assert "error: search.name: the name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'... is 300 bytes; the file system of" in err
    assert "takes at most 255" in err
    assert not (tmp_path / "results").exists()


def test_a_results_dir_too_long_for_the_files_under_it_is_refused(search_data, tmp_path, capsys):
    deep = tmp_path.joinpath(*["d" * 200] * 20)  # ~4,000 bytes: PATH_MAX is 4,096 on Linux
    err = _search(search_data, tmp_path, capsys, deep)
    assert "bytes long; the files a search writes under it need about 200 more" in err
    assert "choose a shorter results.dir" in err


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes in a folder whatever its mode")
def test_a_results_dir_without_write_permission_is_refused(search_data, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    err = _search(search_data, tmp_path, capsys, locked / "results")
    assert f"error: results.dir: cannot write in {locked} (Permission denied)" in err
