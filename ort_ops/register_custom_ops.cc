// The library's only exported symbol: ORT calls it from SessionOptions.register_custom_ops_library.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "common/errors.h"
#include "common/op_list.h"
#include "common/ort_api.h"
#include "cpu/cpu_ops.h"
#if defined(CAFFE2_ORT_WITH_CUDA)
#include "cuda/cuda_ops.h"
#endif

namespace caffe2_ort {
namespace {

// "1.21.0" -> 21: ORT's API version equals its minor release number.
uint32_t MinorVersion(const char* version) {
  if (version == nullptr) return 0;
  const char* dot = std::strchr(version, '.');
  return dot == nullptr ? 0 : static_cast<uint32_t>(std::strtoul(dot + 1, nullptr, 10));
}

struct Registry {
  std::mutex mutex;
  OpList ops;
  OrtCustomOpDomain* domain = nullptr;  // never released: sessions may outlive any owner we could pick
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();  // leaked on purpose, see above
  return *registry;
}

OrtCustomOpDomain* BuildDomain(uint32_t api_version) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.domain != nullptr) return r.domain;
  AddCpuOps(api_version, r.ops);
#if defined(CAFFE2_ORT_WITH_CUDA)
  AddCudaOps(api_version, r.ops);
#endif
  OrtCustomOpDomain* domain = nullptr;
  Ort::ThrowOnError(Api().CreateCustomOpDomain(kDomain, &domain));
  for (const auto& op : r.ops) {
    OrtStatus* status = Api().CustomOpDomain_Add(domain, op.get());
    if (status != nullptr) {
      Api().ReleaseCustomOpDomain(domain);
      Ort::ThrowOnError(status);
    }
  }
  r.domain = domain;
  return domain;
}

}  // namespace
}  // namespace caffe2_ort

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace caffe2_ort;
  if (api_base == nullptr) return nullptr;
  const char* runtime = api_base->GetVersionString();
  const uint32_t runtime_api = MinorVersion(runtime);
  const uint32_t version = std::min<uint32_t>(runtime_api, ORT_API_VERSION);

  const OrtApi* api = version > 0 ? api_base->GetApi(version) : nullptr;
  if (api == nullptr || version < kMinOrtApiVersion) {
    // API version 1 exists in every runtime and is enough to report the problem.
    const OrtApi* oldest = api != nullptr ? api : api_base->GetApi(1);
    if (oldest == nullptr) return nullptr;
    std::string message = "caffe2-ort needs onnxruntime >= 1." + std::to_string(kMinOrtApiVersion) +
                          " (API version " + std::to_string(kMinOrtApiVersion) + "); this process runs onnxruntime " +
                          (runtime ? runtime : "of unknown version");
    return oldest->CreateStatus(ORT_NOT_IMPLEMENTED, message.c_str());
  }
  // One runtime per process: the first registration fixes the API table for all later ones.
  static std::once_flag api_once;
  std::call_once(api_once, [&] { SetApi(api, version); });

  return StatusFrom([&] { Ort::ThrowOnError(Api().AddCustomOpDomain(options, BuildDomain(version))); });
}
