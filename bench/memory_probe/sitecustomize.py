"""The memory rung's probe of Python's own allocator, in every Python process
the bench starts with this directory on PYTHONPATH (the bridge, its SDK
workers, the floor): a `sitecustomize` module, so nothing of the bridge is
changed to carry it.

Contract: only when BENCH_MEMORY_PROBE names a directory. A daemon thread
stats ``$BENCH_MEMORY_PROBE/request`` every PROBE_INTERVAL seconds; when its
content (a counter the bench writes) changes, it writes
``$BENCH_MEMORY_PROBE/<pid>.json``: {"request": counter, "pid",
"argv", "arenas", "arena_bytes", "allocated_bytes", "allocated_blocks"} and
glibc's malloc totals (_glibc_stats).

Why this and not tracemalloc or gc: tracemalloc hooks every allocation, and
counting objects walks every one of them; both change what they measure.
sys._debugmallocstats prints to the C stderr, which is the bridge's redactor
pipe. The same C function, _PyObject_DebugMallocStats, is called here on a
FILE* from open_memstream instead: it walks obmalloc's arenas and pools
(about 1 ms for 100 arenas) and touches no file descriptor. It covers
Python's small-object allocator (objects of at most 512 bytes); larger
Python allocations (an audio packet's bytes, a list's array) go to malloc
and are counted with native memory.
"""

from __future__ import annotations

import os

PROBE_INTERVAL = 0.2


def _malloc_stats() -> dict[str, int]:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.open_memstream.restype = ctypes.c_void_p
    libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    dump = ctypes.pythonapi._PyObject_DebugMallocStats  # holds the GIL (PyDLL)
    dump.argtypes = [ctypes.c_void_p]
    dump(stream)
    libc.fclose(stream)
    text = ctypes.string_at(buffer, size.value).decode(errors="replace")
    libc.free(ctypes.cast(buffer, ctypes.c_void_p))
    numbers: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        name = name.strip().lstrip("#").strip()
        value = value.strip().replace(",", "")
        if value.isdigit():
            numbers[name] = int(value)
    arena_bytes = next((value for name, value in numbers.items() if name.endswith("bytes/arena")), 0)
    return {"arenas": numbers.get("arenas allocated current", 0), "arena_bytes": arena_bytes,
            "allocated_bytes": numbers.get("bytes in allocated blocks", 0)}


class _Mallinfo2(__import__("ctypes").Structure):
    _fields_ = [(name, __import__("ctypes").c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _glibc_stats() -> dict[str, int]:
    """glibc malloc's own totals over all its arenas (mallinfo2): what the
    process's native allocations hold in use, what malloc keeps free in its
    heaps (what malloc_trim could give back at most), and its mmapped blocks."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return {"malloc_in_use_bytes": info.uordblks + info.hblkhd, "malloc_free_bytes": info.fordblks,
            "malloc_mmapped_bytes": info.hblkhd, "malloc_heap_bytes": info.arena}


def _serve(directory: str) -> None:
    import json
    import sys
    import time

    request_path = os.path.join(directory, "request")
    last = None
    while True:
        time.sleep(PROBE_INTERVAL)
        try:
            with open(request_path) as request:
                counter = request.read().strip()
        except OSError:
            continue
        if counter == last:
            continue
        last = counter
        answer = dict(_malloc_stats(), **_glibc_stats(), request=counter, pid=os.getpid(), argv=sys.argv[:3],
                      allocated_blocks=sys.getallocatedblocks())
        target = os.path.join(directory, f"{os.getpid()}.json")
        with open(target + ".tmp", "w") as out:
            json.dump(answer, out)
        os.replace(target + ".tmp", target)


if os.environ.get("BENCH_MEMORY_PROBE"):
    import threading

    threading.Thread(target=_serve, args=(os.environ["BENCH_MEMORY_PROBE"],), name="memory-probe",
                     daemon=True).start()
