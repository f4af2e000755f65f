// Access to the ONNX Runtime API table agreed at load time.
//
// The library never links libonnxruntime: RegisterCustomOps receives the runtime's OrtApiBase and
// picks API version min(runtime, compiled). Everything else reads the table through Api().
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>

namespace caffe2_ort {

// Oldest API this library needs: KernelContext_ParallelFor and InferOutputShapeFn arrived in 1.17.
constexpr uint32_t kMinOrtApiVersion = 17;

const OrtApi& Api();
uint32_t ApiVersion();
void SetApi(const OrtApi* api, uint32_t version);

}  // namespace caffe2_ort
