#include "framework/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/json.h"
#include "framework/io/tensor_bytes.h"

namespace ml {
namespace {

const char* kMetadataKey = "__metadata__";

const char* dtype_code(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return "F32";
    case DType::Float64:
      return "F64";
    case DType::Int64:
      return "I64";
  }
  return "?";
}

DType parse_dtype_code(const std::string& code) {
  for (DType dtype : {DType::Float32, DType::Float64, DType::Int64})
    if (code == dtype_code(dtype)) return dtype;
  throw std::runtime_error("unsupported dtype '" + code + "' (supported: F32, F64, I64)");
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

Entry parse_entry(const std::string& name, const Json& info, uint64_t data_size) {
  Entry entry{name, parse_dtype_code(info.at("dtype").get<std::string>()), info.at("shape").get<Shape>(), 0, 0};
  const auto offsets = info.at("data_offsets").get<std::vector<int64_t>>();
  if (offsets.size() != 2) throw std::runtime_error("data_offsets must be [begin, end]");
  int64_t begin = offsets[0], end = offsets[1];
  if (begin < 0 || begin > end)
    throw std::runtime_error("invalid data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]");
  entry.begin = static_cast<uint64_t>(begin);
  entry.end = static_cast<uint64_t>(end);
  if (entry.end > data_size)
    throw std::runtime_error("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                             "] out of range: the data section has " + std::to_string(data_size) + " bytes");
  uint64_t expected = tensor_byte_size(entry.shape, entry.dtype);
  if (entry.end - entry.begin != expected)
    throw std::runtime_error("data_offsets span " + std::to_string(entry.end - entry.begin) + " bytes but shape " +
                             shape_str(entry.shape) + " of " + dtype_code(entry.dtype) + " needs " +
                             std::to_string(expected));
  return entry;
}

std::map<std::string, std::string> parse_metadata(const Json& metadata) {
  if (!metadata.is_object())
    throw std::runtime_error(std::string("__metadata__ must be an object, got ") + metadata.type_name());
  std::map<std::string, std::string> result;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string())
      throw std::runtime_error("__metadata__ must map strings to strings, but \"" + key + "\" holds a " +
                               value.type_name());
    result[key] = value.get<std::string>();
  }
  return result;
}

// The spec requires the tensors to tile the data section exactly: no overlaps (which would
// alias tensors) and no gaps (which would let a file hide extra content).
void check_layout(std::vector<Entry> entries, uint64_t data_size) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    if (entry.begin < covered)
      throw std::runtime_error("tensors '" + previous->name + "' and '" + entry.name + "' overlap");
    if (entry.begin > covered)
      throw std::runtime_error("data bytes [" + std::to_string(covered) + ", " + std::to_string(entry.begin) +
                               ") before tensor '" + entry.name + "' belong to no tensor");
    covered = entry.end;
    previous = &entry;
  }
  if (covered != data_size)
    throw std::runtime_error("data bytes [" + std::to_string(covered) + ", " + std::to_string(data_size) +
                             ") at the end belong to no tensor");
}

}  // namespace

bool SafetensorsFile::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& entry) { return entry.first == name; });
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [entry_name, tensor] : tensors)
    if (entry_name == name) return tensor;
  throw std::runtime_error("safetensors '" + path + "': no tensor named '" + name + "'");
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) { return std::invalid_argument("safetensors '" + path + "': " + what); };
  Json header = Json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey) throw fail("'__metadata__' is reserved and cannot name a tensor");
    if (!names.insert(name).second) throw fail("duplicate tensor name '" + name + "'");
    if (!tensor.defined()) throw fail("tensor '" + name + "' is undefined");
    uint64_t nbytes = tensor_byte_size(tensor.shape(), tensor.dtype());
    header[name] = Json::object({{"dtype", dtype_code(tensor.dtype())},
                                 {"shape", tensor.shape()},
                                 {"data_offsets", Json::array({offset, offset + nbytes})}});
    offset += nbytes;
  }
  std::string text = dump_json(header);
  // Spaces pad the header so that the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomic(path, [&](std::ostream& out) {
    uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), sizeof length);
    out << text;
    for (const auto& entry : tensors) write_tensor_bytes(out, entry.second);
  });
}

SafetensorsFile load_safetensors(const std::string& path) {
  auto fail = [&](const std::string& what) { return std::runtime_error("safetensors '" + path + "': " + what); };
  std::string bytes = read_file(path);
  uint64_t header_length = 0;
  if (bytes.size() < sizeof header_length)
    throw fail("truncated file of " + std::to_string(bytes.size()) + " bytes, shorter than the header length field");
  std::memcpy(&header_length, bytes.data(), sizeof header_length);
  uint64_t available = bytes.size() - sizeof header_length;
  if (header_length > available)
    throw fail("header length " + std::to_string(header_length) + " exceeds the " + std::to_string(available) +
               " bytes after the length field");
  Json header;
  try {
    header = parse_json(bytes.substr(sizeof header_length, header_length));
  } catch (const std::exception& e) {
    throw fail(std::string("malformed JSON header: ") + e.what());
  }
  if (!header.is_object())
    throw fail(std::string("malformed JSON header: expected an object, got ") + header.type_name());
  const char* data = bytes.data() + sizeof header_length + header_length;
  uint64_t data_size = available - header_length;

  SafetensorsFile file;
  file.path = path;
  std::vector<Entry> entries;
  for (const auto& [name, info] : header.items()) {
    try {
      if (name == kMetadataKey)
        file.metadata = parse_metadata(info);
      else
        entries.push_back(parse_entry(name, info, data_size));
    } catch (const std::exception& e) {
      throw fail((name == kMetadataKey ? name : "tensor '" + name + "'") + ": " + without_json_error_ids(e.what()));
    }
  }
  try {
    check_layout(entries, data_size);
  } catch (const std::exception& e) {
    throw fail(e.what());
  }
  for (const Entry& entry : entries)
    file.tensors.emplace_back(entry.name, tensor_from_bytes(data + entry.begin, entry.shape, entry.dtype));
  return file;
}

}  // namespace ml
