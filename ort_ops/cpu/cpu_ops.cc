#include "cpu/cpu_ops.h"

#include "common/custom_op.h"
#include "cpu/dropout.h"
#include "cpu/dropout_grad.h"

namespace caffe2_ort {

void AddCpuOps(uint32_t api_version, OpList& ops) {
  AddDropoutOps<CpuDropout, CpuDropoutGrad>("CPUExecutionProvider", api_version, ops, &InferDropoutShape);
}

}  // namespace caffe2_ort
