// Crash-safe file replacement and whole-file reads.
#pragma once
#include <functional>
#include <ostream>
#include <string>

namespace ml {

// Streams `writer`'s output into a temporary file beside `path`, fsyncs it and renames it
// over `path`, so a crash at any moment leaves either the old or the new file. On any error
// (the writer throws, a write or fsync fails) the temporary file is removed, the old file is
// untouched, and a std::runtime_error naming `path` is thrown.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer);
void write_file_atomic(const std::string& path, const std::string& bytes);

// The whole file as bytes; throws std::runtime_error naming `path` and the system error.
std::string read_file(const std::string& path);

}  // namespace ml
