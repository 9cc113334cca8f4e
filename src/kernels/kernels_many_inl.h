// MatMulMany: an MoE layer's expert products in shared parallel regions,
// shared by the instruction-set files.
//
// Like kernels_blocking_inl.h, this file is included inside the anonymous
// namespace of each instruction-set file's own namespace, after the code it
// builds on, so each file compiles a private copy with its own -m flags and
// the unqualified names below bind to that file's kernels. It includes
// nothing itself.
//
// The including file defines, before the include (ManyPath is in
// kernels_isa_common.h):
//   ManyPathFor<D>(M, K), the path MatMul takes for M rows of x, K inputs and
//                   weights of dtype D (RowInvariantMatMul and the activation
//                   flags included);
//   ManyGroupedFits<D>(M), whether a job of M rows fits one pass of its path
//                   (and the CPU has what the grouped prefill needs for D);
//   ManyXFloats(path, dtype, M, K, amx_parts), floats of scratch for one
//                   job's prepared x; ManyTileRows(path, M), the rows of one
//                   unit of preparation (a packed tile; a decode job is
//                   prepared whole); ManyChunkCols(path), the output columns
//                   of one unit of work;
//   ManyScratchLimit(max_k), the most floats of prepared x that
//                   MatMulScratchBytes counts for jobs of at most max_k inputs;
//   ManyAmxParts(), the bf16 parts per activation of the tile-unit prefill
//                   (1 where it does not run);
//   ManyTables<D> and MakeManyTables<D>(), constants the kernels take (the
//                   level tables of the integer paths);
//   PrepareManyUnit<D>(path, job, t, base, amx_parts, qx), which prepares
//                   unit t of job's x at base (a decode job's quantized x
//                   also into qx);
//   RunManyRange<D>(path, job, base, qx, n0, n1, after, tables, amx_parts),
//                   which computes the job's output columns [n0, n1) from the
//                   prepared x, fetching the first panel of `after` as it ends;
//   DecodeManyTyped<D>(jobs, n, pool), the fused decode of decode-sized jobs.

// MatMulMany where some job has too many rows for the decode: the prefill
// of an MoE layer, where each of many experts multiplies the 10 to 40 rows
// routed to it. Run one by one, every job paid two parallel regions (pack x,
// then multiply) whose start and finish cost as much as a fifth of the
// products at these sizes. Here every job's x is prepared in one region and
// every job's output columns are multiplied in a second, each thread taking
// a contiguous share of the jobs' columns weighted by their rows. Each job
// takes the path MatMul would take for it (decode or one of the prefills),
// and an output column's value does not depend on which thread computes it
// or where its share begins, so every result is exactly MatMul's. Jobs with
// the same x (an expert's gate and up) share its prepared copy.
constexpr int64_t kMaxPrefillJobs = 256;  // an MoE layer's gate and up products: 2 per expert

template <DType D>
bool PrefillManyTyped(const MatMulJob* jobs, int64_t n, ThreadPool& pool) {
  if (n > kMaxPrefillJobs) return false;
  const int amx_parts = ManyAmxParts();
  struct JobPlan {
    ManyPath path;
    int64_t owner;   // the job whose prepared x this one uses (itself, or an earlier job with the same x)
    int64_t offset;  // its prepared x in the scratch buffer, in floats
    QuantizedX qx;
  };
  JobPlan plan[kMaxPrefillJobs];
  int64_t floats = 0, max_k = 0;
  for (int64_t j = 0; j < n; ++j) {
    const MatMulJob& job = jobs[j];
    const int64_t K = job.w->cols;
    if (!ManyGroupedFits<D>(job.M)) return false;
    plan[j].path = ManyPathFor<D>(job.M, K);
    plan[j].owner = j;
    for (int64_t i = 0; i < j; ++i)
      if (jobs[i].x == job.x && jobs[i].M == job.M && jobs[i].w->cols == K && plan[i].path == plan[j].path) {
        plan[j].owner = plan[i].owner;
        break;
      }
    plan[j].offset = floats;
    if (plan[j].owner == j) floats += RoundUp(ManyXFloats(plan[j].path, D, job.M, K, amx_parts), 16);
    max_k = Max(max_k, K);
  }
  if (floats > ManyScratchLimit(max_k)) return false;
  // The calling thread's buffer, shared with the workers below.
  float* scratch = internal::ThreadScratch(internal::Scratch::kPackedX, static_cast<size_t>(Max(floats, 16)));

  // Region 1: prepare every distinct x, a packed tile (or a decode job) per unit.
  int64_t unit_start[kMaxPrefillJobs + 1];
  unit_start[0] = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t tile = ManyTileRows(plan[j].path, jobs[j].M);
    unit_start[j + 1] = unit_start[j] + (plan[j].owner == j ? (jobs[j].M + tile - 1) / tile : 0);
  }
  ParallelRange(pool, unit_start[n], 1, [&](int64_t u0, int64_t u1) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t lo = Max(u0, unit_start[j]), hi = Min(u1, unit_start[j + 1]);
      // A decode job is one unit, so only one thread writes its plan's qx.
      for (int64_t u = lo; u < hi; ++u)
        PrepareManyUnit<D>(plan[j].path, jobs[j], u - unit_start[j], scratch + plan[j].offset, amx_parts, plan[j].qx);
    }
  });
  for (int64_t j = 0; j < n; ++j) plan[j].qx = plan[plan[j].owner].qx;

  // Region 2: the products. Output columns are cut into chunks at multiples
  // of each path's panel width; a chunk's cost is its columns times K times
  // (its padded rows plus a share for packing or decoding the weights).
  struct Chunk {
    int32_t job;
    int64_t n0, n1;
  };
  int64_t chunks = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t step = ManyChunkCols(plan[j].path);
    chunks += (jobs[j].w->rows + step - 1) / step;
  }
  // The calling thread's lists, kept between calls. Named through references
  // because in the workers' code below a thread_local's name would mean the
  // worker's own (empty) copy.
  thread_local std::vector<Chunk> calling_thread_chunks;
  thread_local std::vector<double> calling_thread_costs;
  std::vector<Chunk>& list = calling_thread_chunks;
  std::vector<double>& cost_end = calling_thread_costs;
  list.clear();
  cost_end.clear();
  list.reserve(static_cast<size_t>(chunks));
  cost_end.reserve(static_cast<size_t>(chunks));
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t N = jobs[j].w->rows, step = ManyChunkCols(plan[j].path);
    const int64_t tile = ManyTileRows(plan[j].path, jobs[j].M);
    const double per_col = static_cast<double>(jobs[j].w->cols) *
                           static_cast<double>((jobs[j].M + tile - 1) / tile * tile + 4);
    for (int64_t c = 0; c < N; c += step) {
      list.push_back({static_cast<int32_t>(j), c, Min(c + step, N)});
      total += per_col * static_cast<double>(Min(c + step, N) - c);
      cost_end.push_back(total);
    }
  }
  const int64_t parts = pool.size();
  // Part p takes the chunks whose cost ends within (p / parts, (p + 1) / parts].
  auto first_chunk = [&](int64_t p) -> int64_t {
    if (p >= parts) return static_cast<int64_t>(list.size());
    const double bound = total * static_cast<double>(p) / static_cast<double>(parts);
    return std::upper_bound(cost_end.begin(), cost_end.end(), bound) - cost_end.begin();
  };
  const ManyTables<D> tables = MakeManyTables<D>();
  // A thread's consecutive chunks of one job run as one range, whose panels
  // are then fetched one ahead across chunk boundaries (the results do not
  // depend on where a range starts: every output column is computed alone),
  // and each range fetches the first panel of the next one (FollowingWork).
  ParallelRange(pool, parts, 1, [&](int64_t p0, int64_t p1) {
    const int64_t end = first_chunk(p1);
    auto run_end = [&](int64_t c) {
      while (c + 1 < end && list[static_cast<size_t>(c + 1)].job == list[static_cast<size_t>(c)].job) ++c;
      return c + 1;
    };
    // Chunks [c, next_c) are this range, [next_c, following_end) the next.
    int64_t c = first_chunk(p0);
    int64_t next_c = c < end ? run_end(c) : end, following_end = end;
    for (; c < end; c = next_c, next_c = following_end) {
      following_end = next_c < end ? run_end(next_c) : end;
      const Chunk chunk{list[static_cast<size_t>(c)].job, list[static_cast<size_t>(c)].n0,
                        list[static_cast<size_t>(next_c - 1)].n1};
      FollowingWork after;
      if (next_c < end) {
        const Chunk& following = list[static_cast<size_t>(next_c)];
        after = {jobs[following.job].w, following.n0, list[static_cast<size_t>(following_end - 1)].n1};
      }
      const int64_t j = chunk.job;
      RunManyRange<D>(plan[j].path, jobs[j], scratch + plan[plan[j].owner].offset, plan[j].qx, chunk.n0, chunk.n1,
                      after, tables, amx_parts);
    }
  });
  return true;
}

// Scoring (ScopedRowInvariantMatMul) takes the grouped prefill at every row
// count, as MatMul takes a prefill: an MoE layer's experts then share two
// parallel regions per group there too, where one by one each product paid
// two of its own.
template <DType D>
bool ManyTyped(const MatMulJob* jobs, int64_t n, ThreadPool& pool) {
  if (::epwa::kernels::RowInvariantMatMul()) return PrefillManyTyped<D>(jobs, n, pool);
  for (int64_t j = 0; j < n; ++j)
    if (!UsesDecode<D>(jobs[j].M, jobs[j].w->cols)) return PrefillManyTyped<D>(jobs, n, pool);
  return DecodeManyTyped<D>(jobs, n, pool);
}

bool MatMulMany(const MatMulJob* jobs, int64_t n, ThreadPool& pool) {
  return ForMatrixType(jobs[0].w->dtype, [&](auto type) { return ManyTyped<decltype(type)::value>(jobs, n, pool); });
}
