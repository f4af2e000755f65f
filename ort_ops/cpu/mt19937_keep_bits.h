// Caffe2's CPU Dropout mask stream (rng = "caffe2_mt19937"): one 32-bit MT19937 per kernel instance,
// seeded by the standard init_genrand, two words per element, turned into the 64-bit keep-bit words
// that ApplyKeepBits (cpu/elementwise.h) consumes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "cpu/keep_bits.h"

namespace caffe2_ort {

// MT19937 (Matsumoto & Nishimura 1998) with a block of 624 tempered outputs kept ready, so drawing
// is a copy out of a buffer and the regeneration loops vectorise.
class Mt19937 {
 public:
  static constexpr size_t kStateWords = 624;

  // init_genrand(seed); `isa` picks the vector width of the regeneration loops (same outputs on all).
  explicit Mt19937(uint32_t seed, CpuIsa isa = CpuIsa::kScalar);

  // The next n 32-bit outputs, in order.
  void Draw(uint32_t* out, size_t n);
  // Drops the next n outputs (as Draw would, without writing them).
  void Skip(uint64_t n);

 private:
  void Regenerate();

  alignas(64) uint32_t state_[kStateWords];
  alignas(64) uint32_t tempered_[kStateWords];
  size_t next_ = kStateWords;  // index into tempered_; kStateWords: regenerate first
  CpuIsa isa_;
};

// Element i of a draw is kept iff v_i < keep_below, v_i = ((hi << 32) | lo) mod 2^53 of its two words
// (hi first). That equals Caffe2's test u < 1 - (double)ratio with u = v * 2^-53, exactly.
uint64_t Mt19937KeepBelow(float ratio);

// words[2 j], words[2 j + 1] = hi, lo of element j: writes ceil(n / 64) keep-bit words.
void Mt19937WordsToKeepBits(CpuIsa isa, const uint32_t* words, size_t n, uint64_t keep_below, uint64_t* bits);

// One node's stream. Training runs take it one at a time (Mt19937Segment), so concurrent runs get
// consecutive, never overlapping segments and a mask depends only on the seed and its position.
class Mt19937Stream {
 public:
  Mt19937Stream(uint32_t seed, CpuIsa isa) : gen_(seed, isa), isa_(isa) {}

 private:
  friend class Mt19937Segment;
  std::mutex run_mutex_;
  Mt19937 gen_;
  CpuIsa isa_;
};

// One training run's draw of 2 n words from a stream, held for the segment's lifetime. The segment
// is cut into chunks of `chunk` elements (a multiple of 64) that are drawn in index order by whichever
// thread asks next, so one thread applies a chunk while another draws the following one, and the
// result does not depend on which thread drew what.
class Mt19937Segment {
 public:
  Mt19937Segment(Mt19937Stream& stream, size_t n, size_t chunk, uint64_t keep_below);

  size_t chunks() const { return (n_ + chunk_ - 1) / chunk_; }
  // Draws the next chunk; writes its ceil(len / 64) keep-bit words (bit j of word w: element
  // 64 w + j of the chunk; unused high bits of the last word are 0) and returns its index. Chunk c
  // covers elements [c * chunk, min(n, (c + 1) * chunk)). Call chunks() times in all.
  size_t DrawNext(uint64_t* bits);
  // Draws the whole segment without producing bits (ratio 0 and 1: the words are still consumed).
  void Skip();

 private:
  std::unique_lock<std::mutex> run_lock_;
  std::mutex draw_mutex_;
  Mt19937& gen_;
  CpuIsa isa_;
  size_t n_, chunk_;
  uint64_t keep_below_;
  size_t next_ = 0;
};

}  // namespace caffe2_ort
