// Crash-safe, checksummed checkpoints of a run directory.
//
// Layout:  RUN/checkpoint.json                 the manifest: the kept checkpoints, newest first,
//                                              each with its step, folder and the crc32 of every file
//          RUN/checkpoints/step-000120/...     one folder per checkpoint
// A checkpoint's files are each written atomically into a fresh folder; only when all of them
// are complete does the manifest, itself replaced atomically, start listing that folder, and only
// then are folders it no longer lists removed. A crash or error at any moment therefore leaves
// the manifest listing complete checkpoints only. Files corrupted later (a bad disk, a careless
// edit) fail their checksum, and a resume falls back to the newest checkpoint that passes.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
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
  std::vector<std::string> files;
  // The crc32 of each file as written; empty when the checkpoint is not listed in a manifest or
  // was written before checksums were recorded (then it cannot be verified).
  std::map<std::string, uint32_t> crc32;

  std::string file(const std::string& name) const { return dir + "/" + name; }
};

// Writes `files` as the checkpoint of `step` and makes it the newest, keeping the `keep` newest
// checkpoints in all. Listed checkpoints at `step` or later (left by a run that resumed from an
// older one) are dropped first. On any error (including one thrown by a file's writer) the error
// propagates and the manifest lists what it listed before.
CheckpointRef write_checkpoint(const std::string& run_dir, int64_t step, const std::vector<CheckpointFile>& files,
                               int64_t keep = 1);

// The checkpoints the manifest of `run_dir` lists, newest first (none without a manifest); not
// verified. Throws std::runtime_error naming the manifest when it is malformed.
std::vector<CheckpointRef> listed_checkpoints(const std::string& run_dir);

// The newest listed checkpoint (not verified), or nullopt when there is none.
std::optional<CheckpointRef> latest_checkpoint(const std::string& run_dir);

// Throws std::runtime_error naming the file when one of the checkpoint's files is missing or its
// crc32 differs from the recorded one.
void verify_checkpoint(const CheckpointRef& checkpoint);

// The newest listed checkpoint that passes verify_checkpoint, or nullopt. `rejected` receives why
// each newer one failed.
std::optional<CheckpointRef> newest_valid_checkpoint(const std::string& run_dir, std::vector<std::string>& rejected);

// Resolves what a user may pass as a checkpoint: a run directory (its newest checkpoint), a
// checkpoint folder, or a file inside one. A folder its run's manifest lists comes with its
// checksums. Not verified.
CheckpointRef resolve_checkpoint(const std::string& path);

}  // namespace ml
