// The multi-tensor chunk table: every array cut into fixed-size chunks, so one native call
// (one launch on the GPU) covers any number of arrays and the work shares out evenly.
#pragma once
#include <cstdint>
#include <vector>

namespace fastopt {

struct Chunk {
  int32_t array;
  int64_t begin, end;
};

inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& sizes, int64_t chunk) {
  std::vector<Chunk> out;
  for (size_t a = 0; a < sizes.size(); ++a)
    for (int64_t b = 0; b < sizes[a]; b += chunk)
      out.push_back({int32_t(a), b, b + chunk < sizes[a] ? b + chunk : sizes[a]});
  return out;
}

}  // namespace fastopt
