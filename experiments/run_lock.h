// One writer per run directory: an exclusive advisory lock (flock) on the directory itself, held
// for as long as a process trains into it. The kernel drops it when the process exits, however it
// exits, so a crashed run never leaves a stale lock behind.
#pragma once
#include <string>

namespace ml {

class RunDirLock {
 public:
  // Locks `dir` (which must exist) or throws std::runtime_error at once, without waiting, when
  // another process (or another lock in this one) holds it.
  explicit RunDirLock(const std::string& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ml
