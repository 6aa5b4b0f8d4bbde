// What every raw kernel source shares, with no torch header (the .cu files include only this and
// CUDA headers, which keeps nvcc fast):
//   DtypeCode  the element type of a void* buffer handed to a CUDA launcher (CPU kernels are
//              templates instead, instantiated for csrc/common/cpu_types.h);
//   Accumulate the type sums are kept in: double for double elements, float for the rest
//              (float, half, bfloat16).
// CUDA launchers return the cudaError_t of their launch as an int (0 = success); the torch side
// (csrc/common/op.h) turns a non-zero code into an error naming the launcher.
#pragma once
#include <cstdint>
#include <type_traits>

namespace clarep_fast {

enum DtypeCode : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

template <typename T>
using Accumulate = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace clarep_fast
