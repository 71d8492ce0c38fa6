// Stand-alone driver of the C ABI in runner.cpp: no Python at all, so it runs under qemu-aarch64 for the ARM check
// and gives the bare process RSS of a forward pass.
//
//   cooperllm_et_run MODEL.pte INPUTS.bin [--repeat N] [--threads N] [--no-mmap]
//
// INPUTS.bin holds every input's raw bytes, concatenated in the program's input order (sizes from the program).
// Prints one JSON line: loss, label logits, load seconds, forward milliseconds per repeat, peak RSS in MB.

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct cl_runner;
extern "C" {
int cl_set_threads(int n, char* err, size_t err_len);
int cl_runner_load(const char* path, int mmap, cl_runner** out, char* err, size_t err_len);
int cl_runner_num_inputs(const cl_runner* r);
int cl_runner_input_info(const cl_runner* r, int index, int* dtype, int* ndim, int64_t* sizes, int max_dims);
int cl_runner_run(cl_runner* r, const void* const* data, const uint64_t* nbytes, int n, char* err, size_t err_len);
int cl_runner_num_outputs(const cl_runner* r);
int cl_runner_output_f32(const cl_runner* r, int index, float* dst, int64_t capacity, int64_t* numel, char* err,
                         size_t err_len);
void cl_runner_free(cl_runner* r);
}

namespace {

double now_s() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

int die(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    return die("usage: cooperllm_et_run MODEL.pte INPUTS.bin [--repeat N] [--threads N] [--no-mmap]");
  }
  int repeat = 1, threads = 0, use_mmap = 1;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--no-mmap") {
      use_mmap = 0;
    } else {
      return die("unknown argument " + a);
    }
  }
  if (repeat < 1) return die("--repeat must be >= 1");
  char err[1024] = {0};
  if (threads > 0 && cl_set_threads(threads, err, sizeof err) != 0) return die(err);

  double t0 = now_s();
  cl_runner* r = nullptr;
  if (cl_runner_load(argv[1], use_mmap, &r, err, sizeof err) != 0) return die(err);
  double load_s = now_s() - t0;

  const int n = cl_runner_num_inputs(r);
  std::vector<uint64_t> nbytes(n);
  uint64_t total = 0;
  for (int i = 0; i < n; ++i) {
    int dtype = 0, ndim = 0;
    int64_t sizes[16] = {0};
    cl_runner_input_info(r, i, &dtype, &ndim, sizes, 16);
    uint64_t numel = 1;
    for (int k = 0; k < ndim && k < 16; ++k) numel *= static_cast<uint64_t>(sizes[k]);
    nbytes[i] = numel * (dtype == 1 ? 8 : 4);
    total += nbytes[i];
  }
  std::FILE* f = std::fopen(argv[2], "rb");
  if (f == nullptr) return die(std::string("cannot open ") + argv[2]);
  std::vector<unsigned char> blob(total);
  size_t got = std::fread(blob.data(), 1, total, f);
  bool extra = std::fgetc(f) != EOF;
  std::fclose(f);
  if (got != total || extra) {
    return die(std::string(argv[2]) + " must hold exactly " + std::to_string(total) + " bytes of inputs");
  }
  std::vector<const void*> ptrs(n);
  uint64_t off = 0;
  for (int i = 0; i < n; ++i) {
    ptrs[i] = blob.data() + off;
    off += nbytes[i];
  }

  std::vector<double> ms;
  for (int k = 0; k < repeat; ++k) {
    double s = now_s();
    if (cl_runner_run(r, ptrs.data(), nbytes.data(), n, err, sizeof err) != 0) return die(err);
    ms.push_back((now_s() - s) * 1e3);
  }
  float loss = 0;
  int64_t numel = 0;
  if (cl_runner_output_f32(r, 0, &loss, 1, &numel, err, sizeof err) != 0) return die(err);
  std::vector<float> logits(1 << 16);
  int64_t nlog = 0;
  if (cl_runner_num_outputs(r) > 1 &&
      cl_runner_output_f32(r, 1, logits.data(), static_cast<int64_t>(logits.size()), &nlog, err, sizeof err) != 0) {
    return die(err);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("{\"loss\": %.9g, \"logits\": [", loss);
  for (int64_t i = 0; i < nlog; ++i) std::printf("%s%.9g", i ? ", " : "", logits[i]);
  std::printf("], \"load_s\": %.6f, \"forward_ms\": [", load_s);
  for (size_t i = 0; i < ms.size(); ++i) std::printf("%s%.3f", i ? ", " : "", ms[i]);
  std::printf("], \"peak_rss_mb\": %.1f}\n", ru.ru_maxrss / 1024.0);
  cl_runner_free(r);
  return 0;
}
