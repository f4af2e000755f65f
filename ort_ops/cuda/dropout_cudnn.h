// The cuDNN engine of ai.caffe2 Dropout / DropoutGrad (engine = "CUDNN" on the CUDA EP).
//
// As Caffe2's CuDNNDropoutOp did, the forward's mask output is cuDNN's opaque reserve space
// (cudnnDropoutGetReserveSpaceSize bytes for the whole tensor viewed as (numel, 1, 1, 1)), and the
// gradient consumes those bytes. The RNG states (cudnnDropoutGetStatesSize bytes of device memory)
// belong to one CudnnDropout object: created once, on the first call, on that call's stream, and
// seeded with the node's seed. The gradient's object holds states too (cuDNN's backward needs a
// descriptor with states), though it draws nothing from them.
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "common/element_types.h"

namespace caffe2_ort {
namespace cuda {

// Element types the cuDNN engine accepts (cuDNN's dropout has no bfloat16 kernel).
bool CudnnSupports(Elem elem);
// Throws NOT_IMPLEMENTED naming the node and the type when the cuDNN engine cannot take `elem`.
void RequireCudnnSupport(const std::string& where, Elem elem);
cudnnDataType_t CudnnType(Elem elem);

class CudnnDropout {
 public:
  // where: "ai.caffe2 Dropout node 'x'" for messages. No device work happens here.
  CudnnDropout(std::string where, Elem elem, float ratio, uint64_t seed);
  ~CudnnDropout();
  CudnnDropout(const CudnnDropout&) = delete;
  CudnnDropout& operator=(const CudnnDropout&) = delete;

  // Bytes of reserve space a tensor of n elements needs; throws OpError when n is beyond cuDNN's
  // 32-bit dimensions.
  static size_t ReserveBytes(const std::string& where, Elem elem, uint64_t n);
  size_t ReserveBytes(uint64_t n) const { return ReserveBytes(where_, elem_, n); }

  // handle must be bound to the stream the caller's work runs on.
  void Forward(cudnnHandle_t handle, const void* x, void* y, void* reserve, size_t reserve_bytes, uint64_t n);
  void Backward(cudnnHandle_t handle, const void* dy, const void* reserve, size_t reserve_bytes, void* dx,
                uint64_t n);

 private:
  void EnsureStates(cudnnHandle_t handle);  // mutex_ held

  std::string where_;
  Elem elem_;
  float ratio_;
  uint64_t seed_;
  std::mutex mutex_;
  cudnnDropoutDescriptor_t desc_ = nullptr;
  bool configured_ = false;
  void* states_ = nullptr;
  size_t states_bytes_ = 0;
};

}  // namespace cuda
}  // namespace caffe2_ort
