#include "experiments/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace ml {

RunDirLock::RunDirLock(const std::string& dir) {
  fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error(dir + ": cannot open the run directory to lock it: " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
  const int error = errno;
  ::close(fd_);
  if (error == EWOULDBLOCK)
    throw std::runtime_error(dir + ": another muonlab process is training in this run directory; wait for it to "
                             "finish or stop it first (one writer per run)");
  throw std::runtime_error(dir + ": cannot lock the run directory: " + std::strerror(error));
}

RunDirLock::~RunDirLock() { ::close(fd_); }

}  // namespace ml
