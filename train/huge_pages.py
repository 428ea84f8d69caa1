"""Transparent huge pages for XLA's host buffers: the programs re-execute themselves once.

XLA's CPU runtime allocates every call's temporary buffer with glibc's malloc (951 MB for
the paper's training step at batch 4, 224², when this was written; 445 MB on 2026-12-08).
glibc maps a block that large fresh from the kernel on each call and unmaps it afterwards,
so every step touched ~237,000 new 4 KiB pages: on the 2-core CPU of `benchmarks/RESULTS.md`
a third of the step's CPU time went to the kernel's page faults. glibc >= 2.35 can ask the
kernel for transparent huge pages on what it maps (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,
an madvise(MADV_HUGEPAGE)): ~1,000 faults of 2 MiB per step instead, and fewer TLB misses.
The paper's CPU step went from 639 to 456 ms (`benchmarks/huge_pages.py`), the built-in
benchmark's from 71.4 to 63.8 ms; results are unchanged (only where memory comes from
changes). Keeping the buffer in glibc's heap instead, so that nothing faults, made the step
slower (`benchmarks/RESULTS.md`, 2026-12-08): the huge pages alone are what is set.

glibc reads its tunables once, at process start, so `reexec_with_huge_pages()` (called first
thing by `train/main.py` and the other programs) starts the program again with the tunable
added to the environment. It does nothing where it cannot help (not Linux, not glibc >= 2.35,
transparent huge pages disabled), when the tunable is already set, or when
`P2P_HUGE_PAGES=0`. The library (`grouped_select`) never does this; in a notebook, start the
kernel with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment to get the same.
"""

import os
import pathlib
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "P2P_HUGE_PAGES"  # "0": run as started
_THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _transparent_huge_pages_enabled(setting: pathlib.Path = _THP_SETTING) -> bool:
    """Whether the kernel grants huge pages on madvise: mode "always" or "madvise"."""
    try:
        return "[never]" not in setting.read_text()
    except OSError:
        return False


def _glibc_has_hugetlb_tunable() -> bool:
    """glibc's `glibc.malloc.hugetlb` tunable exists from 2.35 on."""
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def huge_pages_environment(environ: dict[str, str], thp_enabled: bool) -> dict[str, str] | None:
    """The environment to re-execute with, or None to run as started.

    Args:
      environ: the current environment.
      thp_enabled: whether this machine can give glibc transparent huge pages.

    Returns:
      A copy of `environ` with `TUNABLE` appended to `GLIBC_TUNABLES` (keeping the tunables
      already there), or None when opted out, already set, or not possible here.
    """
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb" in tunables or not thp_enabled:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, TUNABLE)))}


def reexec_with_huge_pages() -> None:
    """Restarts this program with glibc asking for transparent huge pages (see module doc).

    Call it before any work: the process image is replaced, with the same arguments, process
    id and open files. Returns normally where nothing is to be done.
    """
    if sys.platform != "linux" or not _glibc_has_hugetlb_tunable():
        return
    environ = huge_pages_environment(dict(os.environ), _transparent_huge_pages_enabled())
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # `sys.orig_argv` is the command line as given (`-m module`, `-X` options included).
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
