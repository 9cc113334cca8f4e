#include "base/aligned.h"

#include <sys/mman.h>

namespace epwa {

void AdviseHugePages(void* p, size_t bytes) {
#ifdef MADV_HUGEPAGE
  // The result is ignored on purpose: without THP the pages stay 4 KiB,
  // which is only slower.
  (void)madvise(p, bytes, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace epwa
