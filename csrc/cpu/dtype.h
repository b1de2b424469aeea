// Dtype codes of the native CPU kernels' raw buffers, shared with csrc/common.h and the Python
// callers (fastgan/ops/bce.py's _NATIVE_DTYPE_CODES). float16 has no CPU kernel.
#pragma once

namespace fastgan::cpu {

enum DtypeCode : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace fastgan::cpu
