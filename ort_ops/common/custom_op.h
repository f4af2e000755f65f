// A thin adapter from a kernel class to ORT's C OrtCustomOp table.
//
// A Kernel type provides:
//   struct Kernel {
//     Kernel(const OrtKernelInfo* info);          // reads and validates attributes; may throw OpError
//     void Compute(OrtKernelContext* context);     // may throw; must be safe for concurrent calls
//     static constexpr std::array<std::pair<int, int>, N> kMayInplace;  // (input, output) pairs that
//   };                                             // may share a buffer (ORT >= 1.18 may reuse it)
// and the op is described by an OpSignature. One KernelOp is registered per (name, provider,
// element type); ORT merges same-name ops into one schema and picks the kernel whose types match.
#pragma once

#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/errors.h"
#include "common/mask_kind.h"
#include "common/op_list.h"
#include "common/ort_api.h"

namespace caffe2_ort {

struct IoSpec {
  ONNXTensorElementDataType type;
  bool optional;
};

struct OpSignature {
  const char* name;
  const char* provider;
  std::vector<IoSpec> inputs;
  std::vector<IoSpec> outputs;
  // Optional ORT >= 1.17 shape inference hook.
  OrtStatusPtr (*infer_shape)(OrtShapeInferContext*) = nullptr;
};

template <typename Kernel>
class KernelOp : public OrtCustomOp {
 public:
  KernelOp(OpSignature signature, uint32_t api_version) : sig_(std::move(signature)) {
    std::memset(static_cast<OrtCustomOp*>(this), 0, sizeof(OrtCustomOp));
    OrtCustomOp::version = api_version;

    OrtCustomOp::GetName = [](const OrtCustomOp* op) { return Self(op).sig_.name; };
    OrtCustomOp::GetExecutionProviderType = [](const OrtCustomOp* op) { return Self(op).sig_.provider; };
    OrtCustomOp::GetInputTypeCount = [](const OrtCustomOp* op) { return Self(op).sig_.inputs.size(); };
    OrtCustomOp::GetInputType = [](const OrtCustomOp* op, size_t i) { return Self(op).sig_.inputs[i].type; };
    OrtCustomOp::GetOutputTypeCount = [](const OrtCustomOp* op) { return Self(op).sig_.outputs.size(); };
    OrtCustomOp::GetOutputType = [](const OrtCustomOp* op, size_t i) { return Self(op).sig_.outputs[i].type; };
    OrtCustomOp::GetInputCharacteristic = [](const OrtCustomOp* op, size_t i) {
      return Self(op).sig_.inputs[i].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    OrtCustomOp::GetOutputCharacteristic = [](const OrtCustomOp* op, size_t i) {
      return Self(op).sig_.outputs[i].optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    OrtCustomOp::GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    OrtCustomOp::GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
    OrtCustomOp::GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
    OrtCustomOp::GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
    OrtCustomOp::GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };

    // The legacy CreateKernel/KernelCompute stay null: they cannot report errors, and every runtime we
    // accept (API >= 17) calls the V2 entry points when they are set (and op version >= 16).
    OrtCustomOp::KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };

    OrtCustomOp::CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                     void** kernel) -> OrtStatusPtr {
      *kernel = nullptr;
      return StatusFrom([&] { *kernel = new Kernel(info); });
    };
    OrtCustomOp::KernelComputeV2 = [](void* kernel, OrtKernelContext* context) -> OrtStatusPtr {
      return StatusFrom([&] { static_cast<Kernel*>(kernel)->Compute(context); });
    };
    if (sig_.infer_shape != nullptr) {
      OrtCustomOp::InferOutputShapeFn = [](const OrtCustomOp* op, OrtShapeInferContext* ctx) -> OrtStatusPtr {
        return Self(op).sig_.infer_shape(ctx);
      };
    }
    OrtCustomOp::GetStartVersion = [](const OrtCustomOp*) { return 1; };
    OrtCustomOp::GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };
#if ORT_API_VERSION >= 18
    if (!Kernel::kMayInplace.empty()) {
      OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
        // ORT passes no op pointer here, so the pairs come from the kernel type.
        const auto& pairs = Kernel::kMayInplace;
        *input_index = static_cast<int*>(std::malloc(sizeof(int) * pairs.size()));
        *output_index = static_cast<int*>(std::malloc(sizeof(int) * pairs.size()));
        if (*input_index == nullptr || *output_index == nullptr) {
          std::free(*input_index);
          std::free(*output_index);
          *input_index = *output_index = nullptr;
          return 0;
        }
        for (size_t i = 0; i < pairs.size(); ++i) {
          (*input_index)[i] = pairs[i].first;
          (*output_index)[i] = pairs[i].second;
        }
        return pairs.size();
      };
      OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
        std::free(input_index);
        std::free(output_index);
      };
    }
#endif
  }

 private:
  static const KernelOp& Self(const OrtCustomOp* op) { return *static_cast<const KernelOp*>(op); }
  OpSignature sig_;
};

// Registers the dropout kernels of one execution provider for every element type, Kernel<E, K> for
// both mask kinds (common/mask_kind.h):
//   Dropout(X: T) -> (Y: T, mask: bool, optional);  DropoutGrad(dY: T, mask: bool, optional) -> dX: T
//   BitmaskDropout(X: T) -> (Y: T, mask: uint32, optional);
//   BitmaskDropoutGrad(dY: T, mask: uint32, optional) -> dX: T
template <template <Elem, MaskKind> class DropoutKernel, template <Elem, MaskKind> class GradKernel>
void AddDropoutOps(const char* provider, uint32_t api_version, OpList& ops,
                   OrtStatusPtr (*infer_dropout_shape)(OrtShapeInferContext*)) {
  auto add = [&](auto elem, auto kind) {
    constexpr Elem E = decltype(elem)::value;
    constexpr MaskKind K = decltype(kind)::value;
    constexpr ONNXTensorElementDataType T = OnnxType<E>();
    constexpr ONNXTensorElementDataType M = MaskOnnxType<K>();
    OpSignature dropout{MaskTraits<K>::kForwardOp, provider, {{T, false}}, {{T, false}, {M, true}},
                        infer_dropout_shape};
    OpSignature grad{MaskTraits<K>::kGradOp, provider, {{T, false}, {M, true}}, {{T, false}}, nullptr};
    ops.push_back(std::make_shared<KernelOp<DropoutKernel<E, K>>>(dropout, api_version));
    ops.push_back(std::make_shared<KernelOp<GradKernel<E, K>>>(grad, api_version));
  };
  auto add_kinds = [&](auto elem) {
    add(elem, std::integral_constant<MaskKind, MaskKind::kBool>{});
    add(elem, std::integral_constant<MaskKind, MaskKind::kBits>{});
  };
  add_kinds(std::integral_constant<Elem, Elem::kFloat>{});
  add_kinds(std::integral_constant<Elem, Elem::kDouble>{});
  add_kinds(std::integral_constant<Elem, Elem::kHalf>{});
  add_kinds(std::integral_constant<Elem, Elem::kBFloat16>{});
}

}  // namespace caffe2_ort
