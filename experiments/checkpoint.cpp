#include "experiments/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "framework/io/atomic_file.h"
#include "framework/io/json.h"

namespace ml {
namespace fs = std::filesystem;
namespace {

constexpr const char* kManifestName = "checkpoint.json";
constexpr const char* kManifestFormat = "muonlab-checkpoint";
constexpr const char* kCheckpointsFolder = "checkpoints";

std::string step_folder_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  return name;
}

std::string manifest_path(const std::string& run_dir) { return run_dir + "/" + kManifestName; }

void remove_stale_checkpoints(const std::string& run_dir, const std::string& keep_folder) {
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(run_dir + "/" + kCheckpointsFolder, error)) {
    if (entry.path().filename() == keep_folder) continue;
    // A folder that cannot be removed now is retried at the next checkpoint; it never counts
    // as a checkpoint because the manifest does not name it.
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
}

}  // namespace

CheckpointRef write_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files) {
  const std::string folder = step_folder_name(step);
  const std::string relative_dir = std::string(kCheckpointsFolder) + "/" + folder;
  const std::string dir = run_dir + "/" + relative_dir;
  const std::optional<CheckpointRef> previous = latest_checkpoint(run_dir);
  if (previous && previous->step == step) return *previous;

  // Leftovers of an interrupted attempt at this step are not a checkpoint (no manifest names them).
  fs::remove_all(dir);
  fs::create_directories(dir);
  Json::Array names;
  for (const CheckpointFile& file : files) {
    file.write(dir + "/" + file.name);
    names.push_back(file.name);
  }
  Json manifest = Json::object({{"format", kManifestFormat},
                                {"version", 1},
                                {"step", step},
                                {"dir", relative_dir},
                                {"files", Json(std::move(names))}});
  write_file_atomic(manifest_path(run_dir), manifest.dump() + "\n");
  remove_stale_checkpoints(run_dir, folder);
  return {step, dir};
}

std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir) {
  const std::string path = manifest_path(run_dir);
  if (!fs::exists(path)) return std::nullopt;
  CheckpointRef ref;
  try {
    const Json manifest = Json::parse(read_file(path));
    if (manifest.at("format").as_string() != kManifestFormat) throw std::runtime_error("not a muonlab checkpoint manifest");
    ref.step = manifest.at("step").as_int();
    ref.dir = run_dir + "/" + manifest.at("dir").as_string();
    for (const Json& name : manifest.at("files").as_array())
      if (!fs::is_regular_file(ref.file(name.as_string())))
        throw std::runtime_error("names the missing file " + ref.file(name.as_string()));
  } catch (const std::exception& error) {
    throw std::runtime_error(path + ": " + error.what());
  }
  return ref;
}

std::string resolve_checkpoint_dir(const std::string& path) {
  if (fs::is_regular_file(path)) {
    const fs::path file(path);
    const std::string folder = file.has_parent_path() ? file.parent_path().string() : ".";
    return file.filename() == kManifestName ? resolve_checkpoint_dir(folder) : folder;
  }
  if (!fs::is_directory(path)) throw std::runtime_error(path + ": no such checkpoint (not a file or a folder)");
  if (const std::optional<CheckpointRef> latest = latest_checkpoint(path)) return latest->dir;
  return path;
}

}  // namespace ml
