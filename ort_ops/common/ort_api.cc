#include "common/ort_api.h"

namespace caffe2_ort {
namespace {
const OrtApi* g_api = nullptr;
uint32_t g_api_version = 0;
}  // namespace

const OrtApi& Api() { return *g_api; }
uint32_t ApiVersion() { return g_api_version; }

void SetApi(const OrtApi* api, uint32_t version) {
  g_api = api;
  g_api_version = version;
  Ort::InitApi(api);
}

}  // namespace caffe2_ort
