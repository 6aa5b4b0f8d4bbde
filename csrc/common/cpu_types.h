// The element types every CPU kernel is built for, each with the type it accumulates in:
// CLAREP_FOR_EACH_CPU_TYPE(M) expands M(T, Acc) once per pair (explicit template instantiation).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define CLAREP_FOR_EACH_CPU_TYPE(M) \
  M(float, float)                   \
  M(double, double)                 \
  M(c10::Half, float)               \
  M(c10::BFloat16, float)
