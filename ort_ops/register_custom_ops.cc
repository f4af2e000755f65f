// The library's only exported symbol: ORT calls it from SessionOptions.register_custom_ops_library.
#include <dlfcn.h>
#include <link.h>

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

// Where the probe starts: a 1.x runtime older than our headers offers API 1.minor at most, and its
// GetApi prints a line to stderr for every newer version asked, so a "1.<minor>" version string
// starts the probe there. Anything else (2.x, a string we do not parse) starts at the compiled
// version: the string only saves probes, GetApi alone decides.
uint32_t ProbeStart(const OrtApiBase* api_base) {
  const char* version = api_base->GetVersionString != nullptr ? api_base->GetVersionString() : nullptr;
  if (version == nullptr || std::strncmp(version, "1.", 2) != 0) return ORT_API_VERSION;
  uint32_t minor = 0;
  const char* p = version + 2;
  if (*p < '0' || *p > '9') return ORT_API_VERSION;
  for (; *p >= '0' && *p <= '9' && minor < ORT_API_VERSION; ++p) minor = minor * 10 + static_cast<uint32_t>(*p - '0');
  return minor < ORT_API_VERSION && minor >= kMinOrtApiVersion ? minor : ORT_API_VERSION;
}

// The newest API table the runtime offers that this library knows: GetApi(v) probed downwards (it
// returns null for a version the runtime lacks) from ProbeStart, so a 2.x runtime reads as new.
// Returns 0 and null below kMinOrtApiVersion.
uint32_t NegotiateApi(const OrtApiBase* api_base, const OrtApi** api) {
  for (uint32_t v = ProbeStart(api_base); v >= kMinOrtApiVersion; --v) {
    if ((*api = api_base->GetApi(v)) != nullptr) return v;
  }
  *api = nullptr;
  return 0;
}

// With no OrtApiBase to report through, the runtime already loaded into this process: the table set
// by an earlier registration, else OrtGetApiBase from any loaded object (ORT's own library, or the
// Python binding that embeds it).
const OrtApi* ApiForError() {
  if (ApiVersion() != 0) return &Api();
  const OrtApiBase* base = nullptr;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) -> int {
        void* handle = dlopen(info->dlpi_name[0] ? info->dlpi_name : nullptr, RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr) return 0;
        using GetApiBase = const OrtApiBase*(ORT_API_CALL*)();
        auto fn = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
        if (fn != nullptr) *static_cast<const OrtApiBase**>(out) = fn();
        dlclose(handle);
        return fn != nullptr ? 1 : 0;
      },
      &base);
  return base != nullptr ? base->GetApi(1) : nullptr;
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
  if (api_base == nullptr || options == nullptr) {
    const OrtApi* api = ApiForError();
    // Without any runtime in the process there is nothing that could carry an error back.
    if (api == nullptr) return nullptr;
    return api->CreateStatus(ORT_INVALID_ARGUMENT, api_base == nullptr
                                                       ? "caffe2-ort: RegisterCustomOps called with a null OrtApiBase"
                                                       : "caffe2-ort: RegisterCustomOps called with null session options");
  }
  // Probe once per runtime: a runtime older than the headers prints a line for each version it lacks.
  static std::mutex probe_mutex;
  static const OrtApiBase* probed_base = nullptr;
  static const OrtApi* probed_api = nullptr;
  static uint32_t probed_version = 0;
  const OrtApi* api = nullptr;
  uint32_t version = 0;
  {
    std::lock_guard<std::mutex> lock(probe_mutex);
    if (api_base != probed_base) {
      probed_version = NegotiateApi(api_base, &probed_api);
      probed_base = api_base;
    }
    api = probed_api;
    version = probed_version;
  }
  if (api == nullptr) {
    // API version 1 exists in every runtime and is enough to report the problem.
    const OrtApi* oldest = api_base->GetApi(1);
    if (oldest == nullptr) return nullptr;
    const char* runtime = api_base->GetVersionString();
    std::string message = "caffe2-ort needs onnxruntime >= 1." + std::to_string(kMinOrtApiVersion) +
                          " (API version " + std::to_string(kMinOrtApiVersion) + "); this process runs onnxruntime " +
                          (runtime ? runtime : "of unknown version");
    return oldest->CreateStatus(ORT_NOT_IMPLEMENTED, message.c_str());
  }
  // One runtime per process: the first registration fixes the API table for all later ones.
  static std::once_flag api_once;
  std::call_once(api_once, [&] { SetApi(api, version); });

  return StatusFrom([&] { Ort::ThrowOnError(Api().AddCustomOpDomain(options, BuildDomain(ApiVersion()))); });
}
