// The kernel of samples/level_zero/vector_add.c, compiled to SPIR-V at build time (clang -target
// spir64, then llvm-spirv). Its arguments are uhmm managed pointers: the same addresses the CPU uses.
__kernel void vector_add(__global const float* a, __global const float* b, __global float* c, uint n) {
  size_t i = get_global_id(0);
  if (i < n) c[i] = a[i] + b[i];
}
