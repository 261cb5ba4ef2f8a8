"""Lake files are private to their owner: the API's tenant isolation is not undone by
``cat`` (issue 15, finding 9). A group may be let in, read-only, by a setgid directory."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.seed import seed_lake
from stream.sink_files import write_range
from tests.factories import make_priced
from tollgate.lake import PRICED, priced_to_table
from tollgate.lake_names import RangeName


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The umask of the attack: 022, which left the lake world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[Path, int]:
    """Permission bits (with setgid) of everything under ``root``, root included."""
    found = {root: stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_the_sinks_files_and_directories_are_private_to_the_owner(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    table = priced_to_table([make_priced()], [("tollgate.priced.v1", 0, 0)])
    written = write_range(lake, PRICED, RangeName("tollgate.priced.v1", 0, 0, 0, 0, 1), table)
    assert written
    for path, mode in modes(lake).items():
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"


def test_a_seeded_lake_is_private_too(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    seed_lake(lake, 2_000, days=2, seed=3)
    found = modes(lake)
    assert any(path.suffix == ".parquet" for path in found)
    assert all(mode & 0o077 == 0 for mode in found.values()), {
        str(p): f"{m:o}" for p, m in found.items() if m & 0o077
    }


def test_a_setgid_lake_directory_lets_its_group_read_and_nobody_else(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    group = grp.getgrgid(os.getgid()).gr_gid
    os.chown(lake, -1, group)
    os.chmod(lake, 0o2750)
    table = priced_to_table([make_priced()], [("tollgate.priced.v1", 0, 0)])
    write_range(lake, PRICED, RangeName("tollgate.priced.v1", 0, 0, 0, 0, 1), table)
    for path, mode in modes(lake).items():
        assert path.stat().st_gid == group
        assert mode == (0o2750 if path.is_dir() else 0o640), f"{path} is {mode:o}"
