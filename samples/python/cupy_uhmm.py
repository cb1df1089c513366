"""CuPy arrays in uhmm memory: cupy.cuda.set_allocator over libuhmm_framework_alloc.so.

    python3 samples/python/cupy_uhmm.py              # uhmm's own runtime, launches through CUPTI
    uhmm-run -- python3 samples/python/cupy_uhmm.py  # the interposer's runtime: copies coherent too

Each allocation is uhmm's; it is freed (after the current stream's work) when CuPy drops its last
reference. CuPy's memory pool is replaced, not layered. Limits: docs/CUDA.md, "Frameworks".
Prints PASS or FAIL; exits 77 without a GPU.
"""
import sys
import time

import cupy

import uhmm_allocator

_lib = uhmm_allocator.load()


class _Block:
    """Owns one uhmm allocation; frees it when CuPy's memory object lets it go."""

    def __init__(self, ptr, size, device):
        self.ptr, self.size, self.device = ptr, size, device

    def __del__(self):
        if _lib is None or cupy is None:  # interpreter shutdown: the process frees everything
            return
        _lib.uhmm_fw_free(self.ptr, self.size, self.device, None)


def uhmm_malloc(size):
    device = cupy.cuda.Device().id
    if size == 0:  # cupy.empty(0): no memory, and no failure
        return cupy.cuda.memory.MemoryPointer(cupy.cuda.memory.UnownedMemory(0, 0, None, device), 0)
    ptr = _lib.uhmm_fw_malloc(size, device, cupy.cuda.get_current_stream().ptr)
    if not ptr:
        raise cupy.cuda.memory.OutOfMemoryError(size, 0, 0)
    mem = cupy.cuda.memory.UnownedMemory(ptr, size, _Block(ptr, size, device), device)
    return cupy.cuda.memory.MemoryPointer(mem, 0)


def main():
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise cupy.cuda.runtime.CUDARuntimeError(100)
    except cupy.cuda.runtime.CUDARuntimeError:
        print("cupy_uhmm: no CUDA device: skipped")
        return 77
    cupy.cuda.set_allocator(uhmm_malloc)
    n = 1 << 24
    t0 = time.perf_counter()
    x = cupy.arange(n, dtype=cupy.float32)
    y = x * 2 + 1
    s = float(y.sum())
    a = cupy.random.rand(1024, 1024, dtype=cupy.float32)
    b = a @ a.T
    cupy.cuda.Device().synchronize()
    ms = (time.perf_counter() - t0) * 1e3
    bad = int((cupy.asnumpy(y) != (cupy.asnumpy(x) * 2 + 1)).sum())
    expected = float(n) * float(n - 1) + n  # sum of 2i + 1
    bad += int(abs(s - expected) > expected * 1e-3)
    bad += int(not cupy.allclose(b, cupy.asarray(cupy.asnumpy(a) @ cupy.asnumpy(a).T), rtol=1e-3, atol=1e-2))
    del x, y, a, b
    print("cupy_uhmm: %s; %.1f ms; %d wrong: %s" % (uhmm_allocator.status(_lib), ms, bad, "PASS" if bad == 0 else "FAIL"))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
