#include "experiments/checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/json.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

constexpr const char* kManifestName = "checkpoint.json";
constexpr const char* kManifestFormat = "muonlab-checkpoint";
constexpr const char* kCheckpointsFolder = "checkpoints";
// Version 1 listed one checkpoint without checksums; version 2 lists the kept ones with them.
constexpr int64_t kManifestVersion = 2;

std::string step_folder_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  return name;
}

std::string manifest_path(const std::string& run_dir) { return run_dir + "/" + kManifestName; }

std::string crc_text(uint32_t crc) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

uint32_t file_crc32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot read");
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(in.gcount()));
  }
  if (in.bad()) throw std::runtime_error(path + ": read error");
  return static_cast<uint32_t>(crc);
}

// A folder's path relative to the run directory, as the manifest records it.
std::string relative_dir(const std::string& run_dir, const CheckpointRef& checkpoint) {
  return checkpoint.dir.substr(run_dir.size() + 1);
}

void write_manifest(const std::string& run_dir, const std::vector<CheckpointRef>& checkpoints) {
  Json entries = Json::array();
  for (const CheckpointRef& checkpoint : checkpoints) {
    Json entry = Json::object({{"step", checkpoint.step}, {"dir", relative_dir(run_dir, checkpoint)}});
    if (checkpoint.crc32.empty()) {  // written before checksums: its names only, as it was listed
      entry["files"] = checkpoint.files;
    } else {
      Json files = Json::object();
      for (const std::string& name : checkpoint.files) files[name] = crc_text(checkpoint.crc32.at(name));
      entry["crc32"] = files;
    }
    entries.push_back(entry);
  }
  const Json manifest =
      Json::object({{"format", kManifestFormat}, {"version", kManifestVersion}, {"checkpoints", std::move(entries)}});
  write_file_atomic(manifest_path(run_dir), dump_json(manifest) + "\n");
}

// What the manifest names stays inside the run: a folder of checkpoints/ and plain file names
// (a damaged or hand-edited manifest must not point the loader, or the clean-up, elsewhere).
bool is_plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

std::string checked_file_name(const std::string& name) {
  if (!is_plain_name(name)) throw std::runtime_error("\"" + name + "\" is not a plain file name");
  return name;
}

uint32_t parse_crc(const std::string& text) {
  static const std::regex hex("[0-9a-f]{8}");
  if (!std::regex_match(text, hex)) throw std::runtime_error("crc32 \"" + text + "\" is not 8 hexadecimal digits");
  return static_cast<uint32_t>(std::stoul(text, nullptr, 16));
}

CheckpointRef parse_entry(const std::string& run_dir, const Json& entry) {
  CheckpointRef checkpoint;
  checkpoint.step = entry.at("step").get<int64_t>();
  const std::string dir = entry.at("dir").get<std::string>();
  const std::string prefix = std::string(kCheckpointsFolder) + "/";
  if (dir.rfind(prefix, 0) != 0 || !is_plain_name(dir.substr(prefix.size())))
    throw std::runtime_error("checkpoint folder \"" + dir + "\" is not a folder of " + kCheckpointsFolder + "/");
  checkpoint.dir = run_dir + "/" + dir;
  if (entry.contains("files")) {  // version 1: names only
    for (const std::string& name : entry.at("files").get<std::vector<std::string>>())
      checkpoint.files.push_back(checked_file_name(name));
    return checkpoint;
  }
  const Json& checksums = entry.at("crc32");
  if (!checksums.is_object())
    throw std::runtime_error(std::string("crc32: expected an object, got ") + checksums.type_name());
  for (const auto& [name, crc] : checksums.items()) {
    checkpoint.files.push_back(checked_file_name(name));
    checkpoint.crc32[name] = parse_crc(crc.get<std::string>());
  }
  return checkpoint;
}

void remove_unlisted_folders(const std::string& run_dir, const std::vector<CheckpointRef>& listed) {
  std::set<std::string> keep;
  for (const CheckpointRef& checkpoint : listed) keep.insert(fs::path(checkpoint.dir).filename().string());
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(run_dir + "/" + kCheckpointsFolder, error)) {
    if (keep.count(entry.path().filename().string())) continue;
    // A folder that cannot be removed now is retried at the next checkpoint; it never counts
    // as a checkpoint because the manifest does not list it.
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
}

}  // namespace

CheckpointRef write_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files,
                               int64_t keep) {
  const std::vector<CheckpointRef> listed = listed_checkpoints(run_dir);
  std::vector<CheckpointRef> older;
  std::copy_if(listed.begin(), listed.end(), std::back_inserter(older),
               [&](const CheckpointRef& checkpoint) { return checkpoint.step < step; });
  // The folder of `step` may be listed (from before a fallback): unlist it before rewriting it.
  if (older.size() != listed.size()) write_manifest(run_dir, older);

  CheckpointRef checkpoint;
  checkpoint.step = step;
  checkpoint.dir = run_dir + "/" + kCheckpointsFolder + "/" + step_folder_name(step);
  // Leftovers of an interrupted attempt at this step are not a checkpoint (no manifest lists them).
  fs::remove_all(checkpoint.dir);
  fs::create_directories(checkpoint.dir);
  for (const CheckpointFile& file : files) {
    file.write(checkpoint.file(file.name));
    // The checksum of the bytes on disk, read back: what a later load will compare against.
    checkpoint.files.push_back(file.name);
    checkpoint.crc32[file.name] = file_crc32(checkpoint.file(file.name));
  }
  std::vector<CheckpointRef> kept{checkpoint};
  for (const CheckpointRef& previous : older)
    if (static_cast<int64_t>(kept.size()) < keep) kept.push_back(previous);
  write_manifest(run_dir, kept);
  remove_unlisted_folders(run_dir, kept);
  return checkpoint;
}

std::vector<CheckpointRef> listed_checkpoints(const std::string& run_dir) {
  const std::string path = manifest_path(run_dir);
  if (!fs::exists(path)) return {};
  std::vector<CheckpointRef> checkpoints;
  try {
    const Json manifest = parse_json(read_file(path));
    if (manifest.at("format").get<std::string>() != kManifestFormat)
      throw std::runtime_error("not a muonlab checkpoint manifest");
    if (manifest.contains("checkpoints")) {
      for (const Json& entry : manifest.at("checkpoints").get<std::vector<Json>>())
        checkpoints.push_back(parse_entry(run_dir, entry));
    } else {
      checkpoints.push_back(parse_entry(run_dir, manifest));
    }
  } catch (const std::exception& error) {
    throw std::runtime_error(path + ": " + error.what());
  }
  return checkpoints;
}

std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir) {
  const std::vector<CheckpointRef> listed = listed_checkpoints(run_dir);
  if (listed.empty()) return std::nullopt;
  return listed.front();
}

void verify_checkpoint(const CheckpointRef& checkpoint) {
  for (const std::string& name : checkpoint.files) {
    const std::string path = checkpoint.file(name);
    if (!fs::is_regular_file(path)) throw std::runtime_error(path + ": missing (the checkpoint's manifest lists it)");
    const auto recorded = checkpoint.crc32.find(name);
    if (recorded == checkpoint.crc32.end()) continue;
    const uint32_t actual = file_crc32(path);
    if (actual != recorded->second)
      throw std::runtime_error(path + ": corrupt (crc32 " + crc_text(actual) + ", the manifest recorded " +
                               crc_text(recorded->second) + ")");
  }
}

std::optional<CheckpointRef> newest_valid_checkpoint(const std::string& run_dir, std::vector<std::string>& rejected) {
  for (const CheckpointRef& checkpoint : listed_checkpoints(run_dir)) {
    try {
      verify_checkpoint(checkpoint);
      return checkpoint;
    } catch (const std::exception& error) {
      rejected.push_back(error.what());
    }
  }
  return std::nullopt;
}

CheckpointRef resolve_checkpoint(const std::string& path) {
  if (fs::is_regular_file(path)) {
    const fs::path file(path);
    // The manifest stands for its run directory, any other file for its checkpoint folder.
    return resolve_checkpoint(file.has_parent_path() ? file.parent_path().string() : ".");
  }
  if (!fs::is_directory(path)) throw std::runtime_error(path + ": no such checkpoint (not a file or a folder)");
  if (const std::optional<CheckpointRef> latest = latest_checkpoint(path)) return *latest;
  // A checkpoint folder: its run directory is two levels up, and its manifest may list it.
  const fs::path folder = fs::path(path).lexically_normal();
  const std::string run_dir = folder.parent_path().parent_path().string();
  if (!run_dir.empty() && fs::exists(manifest_path(run_dir)))
    for (const CheckpointRef& listed : listed_checkpoints(run_dir)) {
      std::error_code missing;
      if (fs::equivalent(listed.dir, folder, missing)) return listed;
    }
  CheckpointRef unlisted;
  unlisted.dir = path;
  return unlisted;
}

}  // namespace ml
