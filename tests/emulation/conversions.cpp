// Every float -> fp16/bf16 conversion and every fp16/bf16 -> float conversion, hashed in blocks.
// Built twice by tests/test_emulation.py: against the CUDA toolkit's own <cuda_fp16.h> and
// <cuda_bf16.h> (their host implementation) and against csrc/emulation's; the outputs must match.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {

uint16_t bits16(const void* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  return b;
}

uint32_t bits32(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

}  // namespace

int main() {
  // float -> half and float -> bfloat16, round to nearest even: 256 blocks of 2^24 inputs.
  for (uint32_t block = 0; block < 256; ++block) {
    uint64_t half_hash = 1469598103934665603ull, bf16_hash = 1469598103934665603ull;
    for (uint32_t low = 0; low < (1u << 24); ++low) {
      const uint32_t u = (block << 24) | low;
      float f;
      std::memcpy(&f, &u, 4);
      const __half h = __float2half_rn(f);
      const __nv_bfloat16 b = __float2bfloat16_rn(f);
      half_hash = (half_hash ^ bits16(&h)) * 1099511628211ull;
      bf16_hash = (bf16_hash ^ bits16(&b)) * 1099511628211ull;
    }
    std::printf("to16 %u %016llx %016llx\n", block, static_cast<unsigned long long>(half_hash),
                static_cast<unsigned long long>(bf16_hash));
  }
  // half -> float and bfloat16 -> float: every pattern, exactly.
  for (uint32_t u = 0; u < 65536; ++u) {
    const uint16_t raw = static_cast<uint16_t>(u);
    __half h;
    __nv_bfloat16 b;
    std::memcpy(&h, &raw, 2);
    std::memcpy(&b, &raw, 2);
    std::printf("from16 %u %08x %08x\n", u, bits32(__half2float(h)), bits32(__bfloat162float(b)));
  }
  return 0;
}
