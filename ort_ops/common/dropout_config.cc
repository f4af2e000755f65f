#include "common/dropout_config.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "common/dropout_math.h"
#include "common/errors.h"
#include "common/mask_kind.h"

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

// The kinds of attribute value ORT's kernel-info API can read. kOther: the attribute exists but none
// of those getters accepts it (STRINGS, GRAPH, TENSORS, ...).
enum class AttrKind { kAbsent, kFloat, kInt, kString, kFloats, kInts, kTensor, kOther };

const char* KindName(AttrKind kind) {
  switch (kind) {
    case AttrKind::kAbsent: return "absent";
    case AttrKind::kFloat: return "FLOAT";
    case AttrKind::kInt: return "INT";
    case AttrKind::kString: return "STRING";
    case AttrKind::kFloats: return "FLOATS";
    case AttrKind::kInts: return "INTS";
    case AttrKind::kTensor: return "TENSOR";
    case AttrKind::kOther: return "another kind (STRINGS, GRAPH, TENSORS, SPARSE_TENSOR or an empty list)";
  }
  return "?";
}

// The full string value (embedded NUL bytes kept: ORT reports the std::string's size).
bool ReadString(const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  if (!Succeeds(Api().KernelInfoGetAttribute_string(info, name, nullptr, &size))) return false;
  std::vector<char> buf(size + 1, '\0');
  if (!Succeeds(Api().KernelInfoGetAttribute_string(info, name, buf.data(), &size))) return false;
  *out = std::string(buf.data(), size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return true;
}

// ORT's scalar, string and tensor getters check the attribute's kind. Its array getters do not: they
// succeed for any attribute that exists, returning the FLOATS / INTS values (none for other kinds).
// So the array getters tell presence, and a non-empty array tells FLOATS or INTS; what none of the
// checked getters reads (STRINGS, GRAPH, TENSORS, an empty list, ...) is kOther.
AttrKind ProbeAttribute(const OrtKernelInfo* info, const char* name) {
  float f;
  int64_t i;
  std::string s;
  if (Succeeds(Api().KernelInfoGetAttribute_float(info, name, &f))) return AttrKind::kFloat;
  if (Succeeds(Api().KernelInfoGetAttribute_int64(info, name, &i))) return AttrKind::kInt;
  if (ReadString(info, name, &s)) return AttrKind::kString;
  OrtAllocator* allocator = nullptr;
  OrtValue* tensor = nullptr;
  if (Succeeds(Api().GetAllocatorWithDefaultOptions(&allocator)) &&
      Succeeds(Api().KernelInfoGetAttribute_tensor(info, name, allocator, &tensor))) {
    Api().ReleaseValue(tensor);
    return AttrKind::kTensor;
  }
  size_t floats = 0, ints = 0;
  if (!Succeeds(Api().KernelInfoGetAttributeArray_float(info, name, nullptr, &floats))) return AttrKind::kAbsent;
  if (floats > 0) return AttrKind::kFloats;
  if (Succeeds(Api().KernelInfoGetAttributeArray_int64(info, name, nullptr, &ints)) && ints > 0) {
    return AttrKind::kInts;
  }
  return AttrKind::kOther;
}

// Whether the attribute is present; throws when it has another kind than `expected`.
bool CheckKind(const OrtKernelInfo* info, const char* name, AttrKind expected, const std::string& where) {
  const AttrKind kind = ProbeAttribute(info, name);
  if (kind == AttrKind::kAbsent) return false;
  if (kind != expected) {
    Fail(ORT_INVALID_ARGUMENT, where, ": attribute ", name, " must be ", KindName(expected), ", got ",
         KindName(kind));
  }
  return true;
}

// Length of the well-formed UTF-8 sequence of 2-4 bytes starting at s[i], or 0.
size_t Utf8SequenceLength(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t len = 0;
  uint32_t code = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2, code = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, code = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, code = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  const bool overlong = (len == 3 && code < 0x800) || (len == 4 && code < 0x10000);
  const bool surrogate = code >= 0xD800 && code <= 0xDFFF;
  return overlong || surrogate || code > 0x10FFFF ? 0 : len;
}

// A string as it may appear in a message: printable ASCII and well-formed UTF-8 kept, every other
// byte (NUL, control characters, bytes that are not UTF-8) as \xNN and a backslash as \\, so the
// message is valid UTF-8 (Python decodes ORT's messages as UTF-8) and shows what the model holds.
std::string Escaped(const std::string& value) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < value.size();) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c == '\\') {
      out += "\\\\";
      ++i;
    } else if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
      ++i;
    } else if (const size_t len = c >= 0x80 ? Utf8SequenceLength(value, i) : 0) {
      out.append(value, i, len);
      i += len;
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
      ++i;
    }
  }
  return out;
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

void CheckMaskWordCount(const DropoutConfig& config, size_t mask_words, size_t grad_count) {
  const uint64_t needed = MaskWordsFor(grad_count);
  if (mask_words != needed) {
    Fail(ORT_INVALID_ARGUMENT, config.Where(), ": mask has ", mask_words, " words but dY has ", grad_count,
         " elements, which need ", needed, " words");
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

uint64_t FreshSeed() {
  // Absent seed: a different stream per kernel instance, like Caffe2's RandomNumberSeed. getrandom
  // (glibc 2.25) rather than std::random_device, whose static libstdc++ needs a newer glibc.
  uint64_t seed = 0;
  unsigned char* p = reinterpret_cast<unsigned char*>(&seed);
  size_t got = 0;
  while (got < sizeof(seed)) {
    const ssize_t r = getrandom(p + got, sizeof(seed) - got, 0);
    if (r > 0) {
      got += static_cast<size_t>(r);
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  if (got == sizeof(seed)) return seed;
  // No getrandom (kernels before 3.17, some sandboxes): the same entropy pool through the device.
  const int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    got = 0;
    while (got < sizeof(seed)) {
      const ssize_t r = read(fd, p + got, sizeof(seed) - got);
      if (r > 0) {
        got += static_cast<size_t>(r);
      } else if (!(r < 0 && errno == EINTR)) {
        break;
      }
    }
    close(fd);
    if (got == sizeof(seed)) return seed;
  }
  Fail(ORT_FAIL, "caffe2-ort: no entropy source for a fresh Dropout seed (getrandom and /dev/urandom both failed); "
       "give the node a seed attribute");
}

void LogWarning(const OrtKernelInfo* info, const std::string& message) {
  const OrtLogger* logger = nullptr;
  if (!Succeeds(Api().KernelInfo_GetLogger(info, &logger)) || logger == nullptr) return;
  Succeeds(Api().Logger_LogMessage(logger, ORT_LOGGING_LEVEL_WARNING, message.c_str(), __FILE__, __LINE__,
                                   "caffe2_ort::LogWarning"));
}

DropoutConfig ReadDropoutConfig(const OrtKernelInfo* info, const char* op_name, bool with_seed,
                                bool with_engine) {
  DropoutConfig c;
  c.op = op_name;
  c.node = Escaped(NodeName(info));
  const std::string where = c.Where();

  float ratio = 0.5f;
  if (CheckKind(info, "ratio", AttrKind::kFloat, where)) {
    Ort::ThrowOnError(Api().KernelInfoGetAttribute_float(info, "ratio", &ratio));
  }
  if (!(ratio >= 0.0f && ratio <= 1.0f)) {  // also rejects NaN
    Fail(ORT_INVALID_ARGUMENT, where, ": ratio = ", FormatFloat(ratio), " is out of range; valid: 0 <= ratio <= 1");
  }
  c.ratio = ratio;

  int64_t is_test = 0;
  if (CheckKind(info, "is_test", AttrKind::kInt, where)) {
    Ort::ThrowOnError(Api().KernelInfoGetAttribute_int64(info, "is_test", &is_test));
  }
  c.is_test = is_test != 0;

  if (!with_engine && ProbeAttribute(info, "engine") != AttrKind::kAbsent) {
    Fail(ORT_INVALID_ARGUMENT, where, ": ", c.op,
         " has no attribute engine (cuDNN's reserve space is not a bit mask; use Dropout with engine 'CUDNN')");
  }
  std::string engine;
  if (CheckKind(info, "engine", AttrKind::kString, where) && !ReadString(info, "engine", &engine)) {
    Fail(ORT_FAIL, where, ": could not read attribute engine");
  }
  if (engine.empty() || engine == "DEFAULT") {
    c.engine = Engine::kDefault;
  } else if (engine == "CUDNN") {
    c.engine = Engine::kCudnn;
  } else {  // NUL bytes included: "CUDNN\0junk" is not "CUDNN"
    Fail(ORT_INVALID_ARGUMENT, where, ": engine = '", Escaped(engine),
         "' is not supported; accepted: '' (default), 'DEFAULT', 'CUDNN'");
  }

  if (with_seed) {
    std::string rng;
    if (CheckKind(info, "rng", AttrKind::kString, where) && !ReadString(info, "rng", &rng)) {
      Fail(ORT_FAIL, where, ": could not read attribute rng");
    }
    c.rng_text = Escaped(rng);
    if (rng.empty() || rng == "philox") {
      c.rng = Rng::kPhilox;
    } else if (rng == "caffe2_mt19937") {
      c.rng = Rng::kCaffe2Mt19937;
    } else {
      Fail(ORT_INVALID_ARGUMENT, where, ": rng = '", c.rng_text,
           "' is not supported; accepted: '' (default), 'philox', 'caffe2_mt19937'");
    }

    int64_t seed = 0;
    if (CheckKind(info, "seed", AttrKind::kInt, where)) {
      Ort::ThrowOnError(Api().KernelInfoGetAttribute_int64(info, "seed", &seed));
      c.seed = static_cast<uint64_t>(seed);
      c.seeded = true;
    } else {
      c.seed = FreshSeed();
    }
  } else {
    for (const char* forward_only : {"seed", "rng"}) {
      if (ProbeAttribute(info, forward_only) != AttrKind::kAbsent) {
        Fail(ORT_INVALID_ARGUMENT, where, ": ", c.op, " has no attribute ", forward_only,
             " (it belongs to the forward Dropout; the mask input carries its draw)");
      }
    }
  }

  c.threshold = DropThreshold(ratio);
  c.scale = DropScale(ratio);
  return c;
}

}  // namespace caffe2_ort
