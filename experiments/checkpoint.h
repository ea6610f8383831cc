// Crash-safe checkpoints of a run directory.
//
// Layout:  RUN/checkpoint.json                 the manifest: the step and the files of the latest
//                                              complete checkpoint
//          RUN/checkpoints/step-000120/...     one folder per checkpoint
// A checkpoint's files are each written atomically into a fresh folder; only when all of them
// are complete does the manifest, itself replaced atomically, start naming that folder, and only
// then are older folders removed. A crash or error at any moment therefore leaves the manifest
// naming the previous checkpoint, whose files are untouched.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ml {

// One file of a checkpoint: `write` creates it at the path it is given.
struct CheckpointFile {
  std::string name;  // a plain file name, e.g. "model.safetensors"
  std::function<void(const std::string& path)> write;
};

struct CheckpointRef {
  int64_t step = 0;
  std::string dir;  // the checkpoint's folder (absolute or relative like the run directory given)

  std::string file(const std::string& name) const { return dir + "/" + name; }
};

// Writes `files` as the checkpoint of `step` and makes it the latest. On any error (including one
// thrown by a file's writer) the error propagates and the previous checkpoint stays the latest.
CheckpointRef write_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files);

// The latest complete checkpoint of `run_dir`, or nullopt when it has none. Throws
// std::runtime_error naming the manifest when it is malformed or names a missing file.
std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir);

// Resolves what a user may pass as a checkpoint: a run directory (its latest checkpoint), a
// checkpoint folder, or a file inside one. Returns the checkpoint's folder.
std::string resolve_checkpoint_dir(const std::string& path);

}  // namespace ml
