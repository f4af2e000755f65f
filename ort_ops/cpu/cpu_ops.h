// Registration of the CPU kernels.
#pragma once

#include "common/op_list.h"

namespace caffe2_ort {

// Creates the CPU Dropout and DropoutGrad ops for every element type and adds them to `ops`.
void AddCpuOps(uint32_t api_version, OpList& ops);

}  // namespace caffe2_ort
