#include "cuda/cuda_ops.h"

#include "common/custom_op.h"
#include "cpu/dropout.h"  // InferDropoutShape, shared with the CPU kernels
#include "cuda/dropout.h"
#include "cuda/dropout_grad.h"

namespace caffe2_ort {

void AddCudaOps(uint32_t api_version, OpList& ops) {
  AddDropoutOps<cuda::CudaDropout, cuda::CudaDropoutGrad>("CUDAExecutionProvider", api_version, ops,
                                                         &InferDropoutShape);
}

}  // namespace caffe2_ort
