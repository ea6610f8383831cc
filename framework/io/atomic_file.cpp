#include "framework/io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <streambuf>
#include <vector>

namespace ml {
namespace {

std::runtime_error system_error(const std::string& what) {
  return std::runtime_error(what + ": " + std::strerror(errno));
}

// Closes the descriptor on scope exit.
struct FileDescriptor {
  int fd = -1;
  explicit FileDescriptor(int fd) : fd(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
  // Closing is where some file systems (NFS) report deferred write errors, so it is checked.
  void close_checked() {
    int to_close = fd;
    fd = -1;
    if (::close(to_close) != 0) throw system_error("close");
  }
};

// A stream buffer writing straight to a descriptor; keeps the first errno so the caller can
// report "No space left on device" rather than a bare stream failure.
class DescriptorStreamBuf : public std::streambuf {
 public:
  explicit DescriptorStreamBuf(int fd) : fd_(fd), buffer_(1 << 16) { reset_put_area(); }
  int error() const { return error_; }

 protected:
  int_type overflow(int_type c) override {
    if (sync() != 0) return traits_type::eof();
    if (!traits_type::eq_int_type(c, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(c);
      pbump(1);
    }
    return traits_type::not_eof(c);
  }

  int sync() override {
    const char* p = pbase();
    while (p < pptr()) {
      ssize_t written = ::write(fd_, p, static_cast<size_t>(pptr() - p));
      if (written < 0 && errno == EINTR) continue;
      if (written < 0) {
        error_ = errno;
        return -1;
      }
      p += written;
    }
    reset_put_area();
    return 0;
  }

 private:
  void reset_put_area() { setp(buffer_.data(), buffer_.data() + buffer_.size()); }

  int fd_;
  int error_ = 0;
  std::vector<char> buffer_;
};

// Removes the temporary file unless it was renamed into place.
struct TemporaryFile {
  std::string path;
  bool committed = false;
  ~TemporaryFile() {
    if (!committed) ::unlink(path.c_str());
  }
};

std::string directory_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Makes the rename itself durable. Best effort: some file systems refuse fsync on a
// directory, and by now the new contents are already in place.
void sync_directory(const std::string& directory) {
  FileDescriptor dir(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.fd >= 0) ::fsync(dir.fd);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer) {
  // A unique name in the same directory: rename is only atomic within one file system.
  static std::atomic<unsigned> counter{0};
  size_t slash = path.rfind('/');
  std::string directory = directory_of(path);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  try {
    TemporaryFile temp;
    int fd = -1;
    while (fd < 0) {
      temp.path = directory + "/." + base + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
      fd = ::open(temp.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd < 0 && errno != EEXIST) throw system_error("cannot create temporary file '" + temp.path + "'");
    }
    FileDescriptor file(fd);
    DescriptorStreamBuf buffer(file.fd);
    std::ostream out(&buffer);
    writer(out);
    out.flush();
    if (!out) {
      if (buffer.error() == 0) throw std::runtime_error("the output stream failed");
      errno = buffer.error();
      throw system_error("write");
    }
    if (::fsync(file.fd) != 0) throw system_error("fsync");
    file.close_checked();
    if (::rename(temp.path.c_str(), path.c_str()) != 0) throw system_error("rename");
    temp.committed = true;
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot write '" + path + "': " + e.what());
  }
  sync_directory(directory);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path,
                    [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

std::string read_file(const std::string& path) {
  FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.fd < 0) throw system_error("cannot read '" + path + "'");
  std::string data;
  struct stat info;
  if (::fstat(file.fd, &info) == 0 && info.st_size > 0) data.reserve(static_cast<size_t>(info.st_size));
  std::vector<char> chunk(1 << 16);
  while (true) {
    ssize_t count = ::read(file.fd, chunk.data(), chunk.size());
    if (count < 0 && errno == EINTR) continue;
    if (count < 0) throw system_error("cannot read '" + path + "'");
    if (count == 0) return data;
    data.append(chunk.data(), static_cast<size_t>(count));
  }
}

}  // namespace ml
