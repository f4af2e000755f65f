// The cuDNN engine of ai.caffe2 Dropout / DropoutGrad (engine = "CUDNN" on the CUDA EP).
//
// As Caffe2's CuDNNDropoutOp did, the forward's mask output is cuDNN's opaque reserve space
// (cudnnDropoutGetReserveSpaceSize bytes for the whole tensor viewed as (numel, 1, 1, 1)), and the
// gradient consumes those bytes. A CudnnDropout holds the dropout descriptor; the RNG states
// (cudnnDropoutGetStatesSize bytes of device memory) belong to the caller, who allocates them (the
// plugin from ORT's allocator, cuda/kernel_memory.h) and orders their uses: the forward seeds them
// once (SeedStates) and advances them with every call; the gradient only points its descriptor at
// states memory (AttachStates) without initialising it, since cuDNN's backward draws nothing.
#pragma once

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstdint>
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
  // Bytes of RNG states for the GPU of `handle`.
  static size_t StatesBytes(cudnnHandle_t handle, const std::string& where);

  // Forward: sets the descriptor and initialises `states` with the seed (cuDNN launches the
  // initialisation on the handle's stream; later work on that stream sees it).
  void SeedStates(cudnnHandle_t handle, void* states, size_t bytes);
  // Backward: sets the descriptor to `states` without touching their contents (no kernel).
  void AttachStates(cudnnHandle_t handle, void* states, size_t bytes);
  bool HasStates() const { return has_states_; }

  // handle must be bound to the stream the caller's work runs on; the caller orders uses of the
  // states across streams. Both need HasStates().
  void Forward(cudnnHandle_t handle, const void* x, void* y, void* reserve, size_t reserve_bytes, uint64_t n);
  void Backward(cudnnHandle_t handle, const void* dy, const void* reserve, size_t reserve_bytes, void* dx,
                uint64_t n);

 private:
  std::string where_;
  Elem elem_;
  float ratio_;
  uint64_t seed_;
  cudnnDropoutDescriptor_t desc_ = nullptr;
  bool has_states_ = false;
};

}  // namespace cuda
}  // namespace caffe2_ort
