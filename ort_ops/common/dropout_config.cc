#include "common/dropout_config.h"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <random>
#include <sstream>
#include <vector>

#include "common/dropout_math.h"
#include "common/errors.h"

namespace caffe2_ort {
namespace {

// Calls an ORT getter; returns false (and frees the status) when it fails.
bool Succeeds(OrtStatus* status) {
  if (status == nullptr) return true;
  Api().ReleaseStatus(status);
  return false;
}

std::string NodeName(const OrtKernelInfo* info) {
  size_t size = 0;
  if (!Succeeds(Api().KernelInfo_GetNodeName(info, nullptr, &size)) || size == 0) return "";
  std::vector<char> buf(size);
  if (!Succeeds(Api().KernelInfo_GetNodeName(info, buf.data(), &size))) return "";
  return std::string(buf.data());
}

bool ReadString(const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  if (!Succeeds(Api().KernelInfoGetAttribute_string(info, name, nullptr, &size))) return false;
  std::vector<char> buf(size + 1, '\0');
  if (!Succeeds(Api().KernelInfoGetAttribute_string(info, name, buf.data(), &size))) return false;
  *out = std::string(buf.data());
  return true;
}

bool HasAttributeOfOtherType(const OrtKernelInfo* info, const char* name) {
  float f;
  int64_t i;
  std::string s;
  return Succeeds(Api().KernelInfoGetAttribute_float(info, name, &f)) ||
         Succeeds(Api().KernelInfoGetAttribute_int64(info, name, &i)) || ReadString(info, name, &s);
}

std::string IoName(OrtStatus* (*getter)(const OrtKernelInfo*, size_t, char*, size_t*), const OrtKernelInfo* info,
                   size_t index) {
  size_t size = 0;
  if (!Succeeds(getter(info, index, nullptr, &size)) || size == 0) return "";
  std::vector<char> buf(size);
  if (!Succeeds(getter(info, index, buf.data(), &size))) return "";
  return std::string(buf.data());
}

// Shortest decimal form that reads back as the same float, so messages show the value the user wrote.
std::string FormatFloat(float v) {
  for (int digits = 6; digits <= 9; ++digits) {
    std::ostringstream os;
    os.precision(digits);
    os << v;
    if (std::isnan(v) || std::strtof(os.str().c_str(), nullptr) == v) return os.str();
  }
  return std::to_string(v);
}

uint64_t FreshSeed() {
  // Absent seed: a different stream per kernel instance, like Caffe2's time-based RandomNumberSeed.
  static std::atomic<uint64_t> instance{0};
  std::random_device device;
  uint64_t s = (static_cast<uint64_t>(device()) << 32) ^ device();
  s ^= static_cast<uint64_t>(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  s ^= (instance.fetch_add(1) + 1) * 0x9E3779B97F4A7C15ull;
  return s;
}

}  // namespace

std::string DropoutConfig::Where() const {
  std::ostringstream os;
  os << "ai.caffe2 " << op << " node '" << node << "'";
  return os.str();
}

void RequireTrainingMask(const DropoutConfig& config, bool has_mask) {
  if (!config.is_test && !has_mask) {
    Fail(ORT_INVALID_ARGUMENT, config.Where(),
         ": training mode (is_test = 0) needs the mask input (input 1, the forward Dropout's mask)");
  }
}

void CheckMaskCount(const DropoutConfig& config, size_t mask_count, size_t grad_count) {
  if (mask_count != grad_count) {
    Fail(ORT_INVALID_ARGUMENT, config.Where(), ": mask has ", mask_count, " elements but dY has ", grad_count,
         "; they must be equal");
  }
}

bool HasInput(const OrtKernelInfo* info, size_t index) {
  size_t count = 0;
  if (!Succeeds(Api().KernelInfo_GetInputCount(info, &count)) || index >= count) return false;
  return !IoName(Api().KernelInfo_GetInputName, info, index).empty();
}

bool HasOutput(const OrtKernelInfo* info, size_t index) {
  size_t count = 0;
  if (!Succeeds(Api().KernelInfo_GetOutputCount(info, &count)) || index >= count) return false;
  return !IoName(Api().KernelInfo_GetOutputName, info, index).empty();
}

DropoutConfig ReadDropoutConfig(const OrtKernelInfo* info, const char* op_name, bool with_seed) {
  DropoutConfig c;
  c.op = op_name;
  c.node = NodeName(info);

  float ratio = 0.5f;
  if (!Succeeds(Api().KernelInfoGetAttribute_float(info, "ratio", &ratio))) {
    if (HasAttributeOfOtherType(info, "ratio")) {
      Fail(ORT_INVALID_ARGUMENT, c.Where(), ": attribute ratio must be a float");
    }
    ratio = 0.5f;
  }
  if (!(ratio >= 0.0f && ratio <= 1.0f)) {  // also rejects NaN
    Fail(ORT_INVALID_ARGUMENT, c.Where(), ": ratio = ", FormatFloat(ratio), " is out of range; valid: 0 <= ratio <= 1");
  }
  c.ratio = ratio;

  int64_t is_test = 0;
  if (!Succeeds(Api().KernelInfoGetAttribute_int64(info, "is_test", &is_test))) {
    if (HasAttributeOfOtherType(info, "is_test")) {
      Fail(ORT_INVALID_ARGUMENT, c.Where(), ": attribute is_test must be an int");
    }
    is_test = 0;
  }
  c.is_test = is_test != 0;

  std::string engine;
  if (!ReadString(info, "engine", &engine)) {
    if (HasAttributeOfOtherType(info, "engine")) {
      Fail(ORT_INVALID_ARGUMENT, c.Where(), ": attribute engine must be a string");
    }
    engine.clear();
  }
  if (engine.empty() || engine == "DEFAULT") {
    c.engine = Engine::kDefault;
  } else if (engine == "CUDNN") {
    c.engine = Engine::kCudnn;
  } else {
    Fail(ORT_INVALID_ARGUMENT, c.Where(), ": engine = '", engine,
         "' is not supported; accepted: '' (default), 'DEFAULT', 'CUDNN'");
  }

  if (with_seed) {
    int64_t seed = 0;
    if (Succeeds(Api().KernelInfoGetAttribute_int64(info, "seed", &seed))) {
      c.seed = static_cast<uint64_t>(seed);
      c.seeded = true;
    } else if (HasAttributeOfOtherType(info, "seed")) {
      Fail(ORT_INVALID_ARGUMENT, c.Where(), ": attribute seed must be an int");
    } else {
      c.seed = FreshSeed();
    }
  }

  c.threshold = DropThreshold(ratio);
  c.scale = DropScale(ratio);
  return c;
}

}  // namespace caffe2_ort
