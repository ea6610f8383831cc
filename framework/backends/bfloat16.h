// float32 -> bfloat16 rounding, written once for the CUDA kernels that pack bf16 GEMM operands
// and for the host tests that check it. A bfloat16 is the top 16 bits of a float32: same sign
// and exponent, 7 of the 23 mantissa bits.
#pragma once
#include <cstdint>
#include <cstring>

#include "framework/random.h"  // ML_HOST_DEVICE

namespace ml {

// The bit pattern of the bfloat16 nearest to x, ties to even (the IEEE default, as
// __float2bfloat16_rn). Overflow rounds to infinity; a NaN stays a quiet NaN of the same sign.
ML_HOST_DEVICE inline uint16_t bfloat16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Adding 0x7fff carries into the kept half exactly when the dropped half is above 0x8000; the
  // kept half's lowest bit adds the one more that makes a tie (exactly 0x8000) round up only
  // from an odd value. No overflow: the largest finite magnitude plus 0x8000 is below 2^32.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

ML_HOST_DEVICE inline float float_from_bfloat16_bits(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float x;
  std::memcpy(&x, &widened, sizeof x);
  return x;
}

// x rounded to the nearest bfloat16, as a float32.
ML_HOST_DEVICE inline float round_to_bfloat16(float x) { return float_from_bfloat16_bits(bfloat16_bits(x)); }

}  // namespace ml
