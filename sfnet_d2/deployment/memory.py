"""
Keeping the optimised model's working memory between calls (``DEPLOY.KEEP_MEMORY``).

Why: PyTorch's CPU allocator is the C library's ``malloc``. glibc serves every block above its
mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and it gives the
top of its heap back to the system once more than the trim threshold is free there. A 1024x2048
forward of SFNet-R18 allocates activations of 32-268 MiB, so each call maps them anew and the
kernel zero-fills every page on first touch: about 540,000 page faults and 1.1 s of system time
per image for the optimised network on the 2-core development machine (docs/BENCHMARK.md).
This is the CPU counterpart of what the CUDA caching allocator does on GPUs.

What :func:`kept_memory` does while the optimised model runs (glibc only; elsewhere it does
nothing and says so once in the log):

* ``mallopt(M_MMAP_MAX, 0)``: large blocks come from the heap, whose freed memory is reused by
  the next call without page faults; on leaving, glibc's default mmap limit is restored, so
  code running outside the optimised model gets fresh mappings for large blocks again (or reuses
  free heap memory the optimised calls left);
* ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)`` (the largest value it takes) once per process: the
  heap is not shrunk when the activations are freed. The process therefore keeps the peak
  working set of its largest optimised call until it exits (about 1.9 GiB resident for
  SFNet-Lite-R18 at 1024x2048, against a 1.5 GiB peak without it), as a GPU process keeps its
  cached blocks. ``malloc_trim(0)`` (:func:`release_kept_memory`) hands it back.

It changes where memory comes from, never what is computed. A user who tuned malloc already
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` with ``glibc.malloc``
set in the environment) is left alone.
"""
import contextlib
import ctypes
import logging
import os
import threading

__all__ = ["kept_memory", "kept_memory_paused", "release_kept_memory", "keep_memory_supported"]

logger = logging.getLogger(__name__)

# glibc's <malloc.h> parameter numbers and defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2 ** 31 - 1  # mallopt takes an int
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

_lock = threading.Lock()
_depth = 0
_libc = None
_checked = False
_trim_threshold_raised = False


def _load_glibc():
    """The C library if it is glibc (mallopt / malloc_trim typed), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


def _glibc():
    """The glibc handle kept_memory may tune, or None (other C libraries, user-tuned malloc),
    checked once."""
    global _libc, _checked
    if _checked:
        return _libc
    _checked = True
    reason = None
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    user_set = [name for name in _USER_MALLOC_SETTINGS if name in os.environ]
    if "glibc.malloc." in tunables:
        user_set.append("GLIBC_TUNABLES")
    if user_set:
        reason = f"malloc is configured by the environment ({', '.join(user_set)}); left as set"
    else:
        _libc = _load_glibc()
        if _libc is None:
            reason = "the C library is not glibc"
    if reason:
        logger.info(f"DEPLOY.KEEP_MEMORY has no effect here: {reason}")
    return _libc


def keep_memory_supported() -> bool:
    """True where :func:`kept_memory` changes the allocator (glibc, not tuned by the user)."""
    return _glibc() is not None


@contextlib.contextmanager
def kept_memory(enabled: bool = True):
    """
    Run the body with large allocations served from a heap that is never trimmed (see the module
    docstring). Re-entrant and thread-safe: the mmap limit is restored when the outermost
    active body (over all threads) ends.
    """
    global _depth, _trim_threshold_raised
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _lock:
        if not _trim_threshold_raised:
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
            _trim_threshold_raised = True
            logger.info("Large blocks now come from a heap kept between calls, for the "
                        "optimised inference (DEPLOY.KEEP_MEMORY) or the training step "
                        "(SOLVER.CPU.KEEP_MEMORY); docs/BENCHMARK.md")
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)


@contextlib.contextmanager
def kept_memory_paused():
    """Inside a :func:`kept_memory` body, run this body with glibc's default mmap limit again:
    its large blocks are mapped afresh and unmapped on free, so memory it needs only once
    (tracing a network holds more than a normal call) is handed back instead of staying in the
    kept heap, where it would fragment it. Outside kept memory it does nothing."""
    with _lock:
        libc = _glibc() if _depth > 0 else None
        paused = libc is not None
        if paused:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
    try:
        yield
    finally:
        if paused:
            with _lock:
                if _depth > 0:
                    libc.mallopt(_M_MMAP_MAX, 0)


def release_kept_memory() -> bool:
    """Give the free heap memory back to the system (``malloc_trim(0)``, also where the user
    tuned malloc: trimming changes no setting); False where the C library is not glibc."""
    libc = _load_glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
