// The out-of-line parts of cpu_common.h.
#include "cpu_common.h"

#include <algorithm>

namespace fastopt {

void check_disjoint(std::vector<Span>& spans) {
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uintptr_t end_any = 0, end_written = 0;
  for (const Span& s : spans) {
    if (s.begin < end_written || (s.written && s.begin < end_any))
      throw py::value_error("arrays that are written must not overlap any other array of the "
                            "call");
    end_any = std::max(end_any, s.end);
    if (s.written) end_written = std::max(end_written, s.end);
  }
}

}  // namespace fastopt
