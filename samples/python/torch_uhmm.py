"""PyTorch tensors in uhmm memory: CUDAPluggableAllocator over libuhmm_framework_alloc.so.

    python3 samples/python/torch_uhmm.py              # uhmm's own runtime, launches through CUPTI
    uhmm-run -- python3 samples/python/torch_uhmm.py  # the interposer's runtime: copies coherent too

Every tensor allocation goes to uhmm_fw_malloc (PyTorch's caching allocator is replaced, not
layered) and every free waits for the tensor's stream first. Limits: docs/CUDA.md, "Frameworks".
Prints PASS or FAIL; exits 77 without a GPU.
"""
import sys
import time

import torch

import uhmm_allocator


def main():
    if not torch.cuda.is_available():
        print("torch_uhmm: no CUDA device: skipped")
        return 77
    lib_path = uhmm_allocator.library_path()
    # Before the first CUDA allocation of the process.
    allocator = torch.cuda.memory.CUDAPluggableAllocator(lib_path, "uhmm_torch_malloc", "uhmm_fw_free")
    torch.cuda.memory.change_current_allocator(allocator)
    lib = uhmm_allocator.load()

    n = 1 << 24
    t0 = time.perf_counter()
    x = torch.arange(n, device="cuda", dtype=torch.float32)
    y = x * 2 + 1
    a = torch.randn(2048, 2048, device="cuda")
    b = a @ a.T
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3
    bad = 0
    host = y.cpu()
    bad += int((host != torch.arange(n, dtype=torch.float32) * 2 + 1).sum())
    bad += int(not torch.allclose(b.cpu(), a.cpu() @ a.cpu().T, rtol=1e-3, atol=1e-2))
    del x, y, a, b
    torch.cuda.synchronize()
    print("torch_uhmm: %s; %.1f ms; %d wrong: %s" % (uhmm_allocator.status(lib), ms, bad, "PASS" if bad == 0 else "FAIL"))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
