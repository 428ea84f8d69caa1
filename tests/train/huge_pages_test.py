"""`train/huge_pages.py`: when the programs restart with glibc's huge-page tunable, and how."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from train import huge_pages


def test_environment_appends_the_tunable_to_those_already_set():
    environ = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/home/user"}
    new = huge_pages.huge_pages_environment(environ, thp_enabled=True)
    assert new == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
        "HOME": "/home/user",
    }
    assert environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"  # not modified in place
    assert huge_pages.huge_pages_environment({}, thp_enabled=True) == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"
    }


@pytest.mark.parametrize(
    "environ, thp_enabled",
    [
        ({"P2P_HUGE_PAGES": "0"}, True),  # opted out
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, True),  # the user chose
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, True),  # already restarted
        ({}, False),  # the kernel gives no transparent huge pages
    ],
)
def test_environment_is_left_alone(environ, thp_enabled):
    assert huge_pages.huge_pages_environment(environ, thp_enabled) is None


@pytest.mark.parametrize(
    "content, enabled",
    [
        ("always [madvise] never\n", True),
        ("[always] madvise never\n", True),
        ("always madvise [never]\n", False),
        (None, False),  # no such file: not Linux, or a kernel without THP
    ],
)
def test_transparent_huge_pages_setting_is_read(tmp_path, content, enabled):
    setting = tmp_path / "enabled"
    if content is not None:
        setting.write_text(content)
    assert huge_pages._transparent_huge_pages_enabled(setting) is enabled


_PROGRAM = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {repo!r})
    with open({log!r}, "a") as log:
        log.write(json.dumps({{"pid": os.getpid(), "argv": sys.argv[1:],
                              "tunables": os.environ.get("GLIBC_TUNABLES")}}) + "\\n")
    from train.huge_pages import reexec_with_huge_pages
    reexec_with_huge_pages()
    """
)


def _starts(tmp_path, **env_overrides) -> list[dict]:
    log = tmp_path / "starts.jsonl"
    program = tmp_path / "program.py"
    program.write_text(_PROGRAM.format(repo=str(REPO), log=str(log)))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(env_overrides)
    subprocess.run(
        [sys.executable, str(program), "--flag", "two words"], env=env, check=True, timeout=60
    )
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_program_restarts_once_with_the_tunable_and_its_arguments(tmp_path):
    possible = (
        sys.platform == "linux"
        and huge_pages._glibc_has_hugetlb_tunable()
        and huge_pages._transparent_huge_pages_enabled()
    )
    starts = _starts(tmp_path)
    if not possible:
        assert len(starts) == 1 and starts[0]["tunables"] is None
        return
    first, second = starts  # exactly two starts: the restart does not restart again
    assert first["tunables"] is None
    assert second["tunables"] == "glibc.malloc.hugetlb=1"
    assert first["pid"] == second["pid"]  # exec: same process, signals still reach it
    assert first["argv"] == second["argv"] == ["--flag", "two words"]


def test_program_runs_as_started_when_opted_out(tmp_path):
    starts = _starts(tmp_path, P2P_HUGE_PAGES="0")
    assert [start["tunables"] for start in starts] == [None]
