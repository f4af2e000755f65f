// Attributes of ai.caffe2 Dropout / DropoutGrad, read and validated once at kernel creation, and
// the per-node Philox counter of the RNG contract.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "common/ort_api.h"
#include "common/philox.h"

namespace caffe2_ort {

enum class Engine { kDefault, kCudnn };

// Which mask stream a Dropout draws (its rng attribute): the Philox contract, or Caffe2's own CPU
// MT19937 stream. DropoutGrad has no rng (its mask carries the draw).
enum class Rng { kPhilox, kCaffe2Mt19937 };

struct DropoutConfig {
  std::string op;          // "Dropout", "DropoutGrad", "BitmaskDropout" or "BitmaskDropoutGrad", for messages
  std::string node;        // the node's name, for messages
  float ratio = 0.5f;
  bool is_test = false;
  Engine engine = Engine::kDefault;
  Rng rng = Rng::kPhilox;  // Dropout only
  std::string rng_text;    // the rng attribute as written ("" when absent), escaped, for messages
  uint64_t seed = 0;       // the seed attribute read as uint64, or a fresh random one (FreshSeed)
  bool seeded = false;     // whether the node carried a seed
  uint64_t threshold = 0;  // drop iff Philox word < threshold (0 keeps all, 2^32 drops all)
  float scale = 0.0f;      // 1 / (1 - ratio) rounded to float; 0 when ratio = 1

  // Training runs with ratio != 0 advance the node's counter; test mode and ratio = 0 consume nothing
  // (a ratio below 2^-32 consumes too, although its threshold of 0 keeps every element).
  bool ConsumesCounter() const { return !is_test && ratio != 0.0f; }
  bool DropsAll() const { return threshold >= (uint64_t{1} << 32); }
  PhiloxKey Key() const { return PhiloxKeyFromSeed(seed); }
  // rng = "caffe2_mt19937": the generator is seeded with seed mod 2^32.
  uint32_t Mt19937Seed() const { return static_cast<uint32_t>(seed); }
  // "ai.caffe2 Dropout node 'name'" for error messages.
  std::string Where() const;
};

// Reads ratio, is_test, engine (and seed and rng for Dropout: with_seed) from the node; throws OpError
// with a message naming the op, the node and the offending value. Without with_engine (the Bitmask ops)
// an engine attribute of any kind or value is refused: cuDNN's reserve space is no bit mask. An attribute of the wrong kind
// (e.g. ratio as INTS or TENSOR) is refused naming the kind found and the kind expected; string
// values with a NUL byte are refused, and are echoed escaped (UTF-8 kept, other bytes as \xNN). DropoutGrad
// refuses seed and rng (they belong to the forward op).
DropoutConfig ReadDropoutConfig(const OrtKernelInfo* info, const char* op_name, bool with_seed,
                                bool with_engine = true);

// A fresh 64-bit seed for a seedless node: 64 bits from getrandom(2), else /dev/urandom.
uint64_t FreshSeed();

// Writes a warning into the session's log (ORT's logger of this kernel); does nothing when the
// runtime offers no logger.
void LogWarning(const OrtKernelInfo* info, const std::string& message);

// DropoutGrad in training (is_test = 0) needs its mask input; throws at kernel creation otherwise.
void RequireTrainingMask(const DropoutConfig& config, bool has_mask);

// DropoutGrad's default-engine check: the mask must hold as many elements as dY (Caffe2 compared
// element counts, not shapes). Throws INVALID_ARGUMENT naming the node and both counts.
void CheckMaskCount(const DropoutConfig& config, size_t mask_count, size_t grad_count);

// BitmaskDropoutGrad's check: the packed mask must hold ceil(numel(dY) / 32) words. Throws
// INVALID_ARGUMENT naming the node, both counts and the words needed.
void CheckMaskWordCount(const DropoutConfig& config, size_t mask_words, size_t grad_count);

// Number of the node's inputs/outputs that are present (an empty name marks an absent optional one).
bool HasInput(const OrtKernelInfo* info, size_t index);
bool HasOutput(const OrtKernelInfo* info, size_t index);

// The 64-bit per-node counter: each training run reserves ceil(numel / 4) blocks atomically, so
// run k of a fresh session is reproducible and concurrent runs never share a stream.
class PhiloxCounter {
 public:
  uint64_t Reserve(uint64_t blocks) { return next_.fetch_add(blocks, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> next_{0};
};

}  // namespace caffe2_ort
