// Registration of the CUDA kernels of the ai.caffe2 domain (CUDAExecutionProvider).
#pragma once

#include <cstdint>

#include "common/op_list.h"

namespace caffe2_ort {

// Adds Dropout and DropoutGrad for float32, float64, float16 and bfloat16 on the CUDA EP, with the
// same signature as the CPU kernels (the mask stays bool; under engine CUDNN its bytes are cuDNN's
// reserve space, see docs/cuda.md).
void AddCudaOps(uint32_t api_version, OpList& ops);

}  // namespace caffe2_ort
