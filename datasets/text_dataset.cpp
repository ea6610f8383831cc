#include "datasets/text_dataset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "datasets/rng.h"

namespace ml {

namespace {

constexpr const char* kVocabHeader = "muonlab-char-vocab 1";
constexpr int32_t kTokenFileMagic = 20240520;
constexpr int64_t kTokenHeaderBytes = 256 * 4;

std::string read_whole_file(const std::string& path, const char* what) {
  // A folder opens like a file and reads as nothing: say what it is, not that it is empty.
  std::error_code error;
  if (std::filesystem::is_directory(path, error))
    throw std::runtime_error(std::string(what) + " " + path + " is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot open ") + what + " " + path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(std::string("cannot read ") + what + " " + path);
  return bytes;
}

void check_val_fraction(double val_fraction) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw std::invalid_argument("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
  }
}

// Moves the last val_fraction of `train` into `val`: the first int(n * (1 - val_fraction)) tokens
// stay, as in nanoGPT's prepare.py.
void split_tail(std::vector<uint16_t>& train, std::vector<uint16_t>& val, double val_fraction) {
  check_val_fraction(val_fraction);
  const auto keep = static_cast<size_t>(static_cast<double>(train.size()) * (1.0 - val_fraction));
  val.assign(train.begin() + static_cast<std::ptrdiff_t>(keep), train.end());
  train.resize(keep);
}

}  // namespace

CharVocab::CharVocab(std::vector<uint8_t> symbols) : symbols_(std::move(symbols)) {
  ids_.fill(-1);
  for (size_t i = 0; i < symbols_.size(); ++i) {
    if (ids_[symbols_[i]] != -1) throw std::runtime_error("character vocabulary lists byte " + std::to_string(symbols_[i]) + " twice");
    ids_[symbols_[i]] = static_cast<int16_t>(i);
  }
}

CharVocab CharVocab::from_text(const std::string& text) {
  std::array<bool, 256> seen{};
  for (unsigned char c : text) seen[c] = true;
  std::vector<uint8_t> symbols;
  for (int b = 0; b < 256; ++b) {
    if (seen[b]) symbols.push_back(static_cast<uint8_t>(b));
  }
  return CharVocab(std::move(symbols));
}

CharVocab CharVocab::all_bytes() {
  std::vector<uint8_t> symbols(256);
  for (int b = 0; b < 256; ++b) symbols[b] = static_cast<uint8_t>(b);
  return CharVocab(std::move(symbols));
}

CharVocab CharVocab::load(const std::string& path) {
  std::istringstream in(read_whole_file(path, "character vocabulary"));
  std::string header;
  std::getline(in, header);
  if (header != kVocabHeader) throw std::runtime_error("character vocabulary " + path + " does not start with \"" + kVocabHeader + "\"");
  std::vector<uint8_t> symbols;
  for (int value; in >> value;) {
    if (value < 0 || value > 255) throw std::runtime_error("character vocabulary " + path + " holds " + std::to_string(value) + ", not a byte");
    symbols.push_back(static_cast<uint8_t>(value));
  }
  if (!in.eof()) throw std::runtime_error("character vocabulary " + path + " holds something other than byte values");
  if (symbols.empty()) throw std::runtime_error("character vocabulary " + path + " is empty");
  try {
    CharVocab vocab(std::move(symbols));
    vocab.file_ = path;
    return vocab;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

void CharVocab::save(const std::string& path) const {
  std::ofstream out(path);
  out << kVocabHeader << '\n';
  for (uint8_t s : symbols_) out << int{s} << '\n';
  if (!out) throw std::runtime_error("cannot write character vocabulary " + path);
}

std::vector<uint16_t> CharVocab::encode(const std::string& text) const {
  std::vector<uint16_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const int16_t id = ids_[static_cast<unsigned char>(text[i])];
    if (id < 0) {
      throw std::runtime_error("byte " + std::to_string(static_cast<unsigned char>(text[i])) + " at offset " +
                               std::to_string(i) + " is not in the character vocabulary" +
                               (file_.empty() ? "" : " " + file_));
    }
    ids[i] = static_cast<uint16_t>(id);
  }
  return ids;
}

std::string CharVocab::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= size()) throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(size()));
    text.push_back(static_cast<char>(symbols_[id]));
  }
  return text;
}

TokenCorpus load_text_char(const std::string& path, const TextCharOptions& options) {
  const std::string text = read_whole_file(path, "text file");
  if (text.empty()) throw std::runtime_error("text file " + path + " is empty");
  TokenCorpus corpus;
  corpus.vocab = options.vocab ? *options.vocab : options.byte_level ? CharVocab::all_bytes() : CharVocab::from_text(text);
  try {
    corpus.train = corpus.vocab->encode(text);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("text file " + path + ": " + e.what());
  }
  corpus.vocab_size = corpus.vocab->size();
  split_tail(corpus.train, corpus.val, options.val_fraction);
  return corpus;
}

std::vector<uint16_t> read_token_file(const std::string& path) {
  const std::string bytes = read_whole_file(path, "token file");
  const auto header_word = [&](int i) {
    int32_t word;
    std::copy_n(bytes.data() + 4 * i, 4, reinterpret_cast<char*>(&word));
    return word;
  };
  int64_t first = 0;
  if (bytes.size() >= kTokenHeaderBytes && header_word(0) == kTokenFileMagic) {
    if (header_word(1) != 1) {
      throw std::runtime_error("token file " + path + " has header version " + std::to_string(header_word(1)) +
                               "; only version 1 (uint16 tokens) is supported");
    }
    const int64_t count = header_word(2);
    const auto payload = static_cast<int64_t>(bytes.size()) - kTokenHeaderBytes;
    if (count < 0 || payload != 2 * count) {
      throw std::runtime_error("token file " + path + ": the header announces " + std::to_string(count) + " tokens but " +
                               std::to_string(payload) + " bytes follow it");
    }
    first = kTokenHeaderBytes;
  } else if (bytes.size() % 2 != 0) {
    throw std::runtime_error("token file " + path + " has no llm.c header and an odd size (" + std::to_string(bytes.size()) +
                             " bytes), so it is not raw uint16 tokens");
  }
  std::vector<uint16_t> tokens((bytes.size() - static_cast<size_t>(first)) / 2);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data() + first);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(data[2 * i] | (data[2 * i + 1] << 8));
  return tokens;
}

TokenCorpus load_text_tokens(const std::string& train_path, const TextTokensOptions& options) {
  TokenCorpus corpus;
  corpus.train = read_token_file(train_path);
  if (options.val_path.empty()) {
    split_tail(corpus.train, corpus.val, options.val_fraction);
  } else {
    corpus.val = read_token_file(options.val_path);
  }
  if (options.vocab_size < 0 || options.vocab_size > 65536) {
    throw std::invalid_argument("text_tokens vocab_size must be in [0, 65536], got " + std::to_string(options.vocab_size));
  }
  if (options.vocab_size == 0) {
    uint16_t largest = 0;
    for (const auto* tokens : {&corpus.train, &corpus.val}) {
      if (!tokens->empty()) largest = std::max(largest, *std::max_element(tokens->begin(), tokens->end()));
    }
    corpus.vocab_size = int64_t{largest} + 1;
  } else {
    corpus.vocab_size = options.vocab_size;
    const auto check = [&](const std::vector<uint16_t>& tokens, const std::string& path) {
      const auto bad = std::find_if(tokens.begin(), tokens.end(), [&](uint16_t t) { return t >= corpus.vocab_size; });
      if (bad != tokens.end()) {
        throw std::runtime_error("token file " + path + ": token " + std::to_string(*bad) + " at index " +
                                 std::to_string(bad - tokens.begin()) + " is not below vocab_size " +
                                 std::to_string(corpus.vocab_size));
      }
    };
    check(corpus.train, train_path);
    check(corpus.val, options.val_path.empty() ? train_path : options.val_path);
  }
  return corpus;
}

TokenBatcher::TokenBatcher(std::shared_ptr<const TokenCorpus> corpus, const TokenBatcherOptions& options)
    : corpus_(std::move(corpus)), options_(options) {
  if (options_.batch_size <= 0 || options_.block_size <= 0) {
    throw std::invalid_argument("text batches need positive batch_size and block_size, got " +
                                std::to_string(options_.batch_size) + " and " + std::to_string(options_.block_size));
  }
  if (static_cast<int64_t>(corpus_->train.size()) <= options_.block_size) {
    throw std::invalid_argument("the training text has " + std::to_string(corpus_->train.size()) +
                                " tokens, too few for one window of block_size + 1 = " +
                                std::to_string(options_.block_size + 1));
  }
}

HostBatch TokenBatcher::windows(const std::vector<uint16_t>& tokens, const std::vector<int64_t>& starts) const {
  const auto batch_size = static_cast<int64_t>(starts.size());
  const int64_t block = options_.block_size;
  HostBatch batch;
  batch.input_shape = {batch_size, block};
  batch.target_shape = {batch_size, block};
  batch.input_ids.resize(static_cast<size_t>(batch_size * block));
  batch.targets.resize(static_cast<size_t>(batch_size * block));
  for (int64_t b = 0; b < batch_size; ++b) {
    const uint16_t* window = tokens.data() + starts[b];
    std::copy(window, window + block, batch.input_ids.begin() + b * block);
    std::copy(window + 1, window + block + 1, batch.targets.begin() + b * block);
  }
  return batch;
}

HostBatch TokenBatcher::train_batch(int64_t step) const {
  if (step < 0) throw std::out_of_range("training step " + std::to_string(step) + " is negative");
  const auto start_count = static_cast<uint64_t>(corpus_->train.size()) - static_cast<uint64_t>(options_.block_size);
  CounterRng rng(rng_key(options_.seed, RngStream::TextWindows, {static_cast<uint64_t>(step)}));
  std::vector<int64_t> starts(static_cast<size_t>(options_.batch_size));
  for (int64_t& start : starts) start = static_cast<int64_t>(rng.below(start_count));
  return windows(corpus_->train, starts);
}

int64_t TokenBatcher::steps_per_epoch() const {
  return std::max<int64_t>(1, static_cast<int64_t>(corpus_->train.size()) / (options_.batch_size * options_.block_size));
}

int64_t TokenBatcher::num_val_windows() const {
  return corpus_->val.empty() ? 0 : (static_cast<int64_t>(corpus_->val.size()) - 1) / options_.block_size;
}

int64_t TokenBatcher::num_val_batches() const { return num_ordered_batches(num_val_windows(), options_.batch_size); }

HostBatch TokenBatcher::val_batch(int64_t index) const {
  const IndexRange range = ordered_batch_range(num_val_windows(), options_.batch_size, index);
  std::vector<int64_t> starts;
  for (int64_t w = range.begin; w < range.end; ++w) starts.push_back(w * options_.block_size);
  return windows(corpus_->val, starts);
}

}  // namespace ml
