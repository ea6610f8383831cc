// Token corpora for language models: a character-level text file (nanoGPT's shakespeare_char)
// or a binary file of uint16 token ids (llm.c's format), and the batcher of random windows.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "datasets/batch.h"

namespace ml {

// Maps the bytes of a text to token ids 0..size-1. Characters are bytes: Tiny Shakespeare is
// ASCII, and byte tokens decode any UTF-8 text back exactly.
class CharVocab {
 public:
  // The sorted distinct bytes of `text`, like nanoGPT's sorted(set(data)).
  static CharVocab from_text(const std::string& text);
  // All 256 byte values (token id = byte).
  static CharVocab all_bytes();
  // The file format of save(): a "muonlab-char-vocab 1" line, then the symbols' byte values in id
  // order, in decimal, whitespace separated.
  static CharVocab load(const std::string& path);
  void save(const std::string& path) const;

  int64_t size() const { return static_cast<int64_t>(symbols_.size()); }
  std::vector<uint16_t> encode(const std::string& text) const;  // throws on a byte outside the vocabulary
  std::string decode(const std::vector<int64_t>& ids) const;
  const std::vector<uint8_t>& symbols() const { return symbols_; }

 private:
  explicit CharVocab(std::vector<uint8_t> symbols);
  std::vector<uint8_t> symbols_;
  std::array<int16_t, 256> ids_;  // -1 for bytes outside the vocabulary
  std::string file_;  // the file load() read it from, named when a text does not fit it; "" when built
};

struct TokenCorpus {
  std::vector<uint16_t> train;
  std::vector<uint16_t> val;
  int64_t vocab_size = 0;
  std::optional<CharVocab> vocab;  // text_char only: store it with the run to decode samples
};

struct TextCharOptions {
  double val_fraction = 0.1;  // the last fraction of the file, like nanoGPT's 90/10 split
  bool byte_level = false;    // all 256 bytes instead of the bytes that occur
  std::optional<CharVocab> vocab;  // a stored vocabulary (e.g. when resuming) instead of building one
};
TokenCorpus load_text_char(const std::string& path, const TextCharOptions& options = {});

// uint16 token ids of one file: with llm.c's header (256 int32: magic 20240520, version 1,
// token count; then the tokens) when the file starts with the magic, else raw uint16 throughout.
std::vector<uint16_t> read_token_file(const std::string& path);

struct TextTokensOptions {
  std::string val_path;       // empty: split off the last val_fraction of the training file
  double val_fraction = 0.1;
  int64_t vocab_size = 0;     // 0: the largest token id + 1; otherwise every id must be below it
};
TokenCorpus load_text_tokens(const std::string& train_path, const TextTokensOptions& options = {});

struct TokenBatcherOptions {
  int64_t batch_size = 0;
  int64_t block_size = 0;
  uint64_t seed = 0;
};

// Train batch `step`: batch_size windows of block_size + 1 tokens at starts drawn from
// (seed, step); inputs are the first block_size tokens, targets the next-token shift.
// Validation batches tile the validation tokens with consecutive non-overlapping windows,
// each token predicted once; the last batch may be smaller.
class TokenBatcher final : public Batcher {
 public:
  TokenBatcher(std::shared_ptr<const TokenCorpus> corpus, const TokenBatcherOptions& options);

  HostBatch train_batch(int64_t step) const override;
  int64_t steps_per_epoch() const override;  // train tokens / (batch_size * block_size), at least 1
  int64_t num_val_batches() const override;
  HostBatch val_batch(int64_t index) const override;

 private:
  HostBatch windows(const std::vector<uint16_t>& tokens, const std::vector<int64_t>& starts) const;
  int64_t num_val_windows() const;

  std::shared_ptr<const TokenCorpus> corpus_;
  TokenBatcherOptions options_;
};

}  // namespace ml
