// Verilator-native harness for the fxpgen core: streams a job from a file, runs it
// without any per-cycle Python, and writes one JSON result file.
//
// Built by fxpgen.sim.native (verilator --cc --exe --build, top module prefix
// Vcore) with the port widths as macros:
//   FXP_INSN_BITS     insn payload bits (fxpgen.isa.INSN_BITS)
//   FXP_DATA_BITS     data payload bits (cfg.bus_width)
//   FXP_RESULT_BITS   result payload bits (cfg.bus_width + 1; the top bit is `last`)
//   FXP_COUNTER_BITS  counter output bits (cfg.counter_width)
//   FXP_TRACE         (optional) build the timeline output; the model must then make
//                     the units' busy wires of the top module readable
//                     (Verilator public_flat_rd: load__busy, store__busy, loadw__busy,
//                     matmul__busy, vector__busy)
//
// Usage: fxpgen_native JOB OUT [TIMELINE]     (TIMELINE only in an FXP_TRACE build)
//
// JOB is text, one item per line (every number decimal, every word hex without 0x):
//   fxpgen-native-job 2
//   widths <insn> <data> <result> <counter>      must equal the macros above
//   seed <u64>
//   stall <p_insn> <p_data> <p_result>           each in [0, 1)
//   drain_cycles <n>
//   max_total_cycles <n>                         0 = no limit
//   timeout_s <seconds>                          wall clock, 0 = no limit
//   programs <K>
//   <n_insns> <n_data> <n_halts> <n_results> <max_cycles>     K lines
//   insns <N>
//   <hex>                                        N lines
//   data <D>
//   <hex>                                        D lines
//   refs <R>
//   <program> <at> <base> <first> <count> <run> <stride>      R lines
//   end
//
// A ref plays the host of off-chip maps: before program <program> starts, its data
// word <at> + k (counted from its first data word), for k < <count>, becomes result
// word <first> + (k / <run>) * <stride> + k % <run> of the programs from <base> on
// (their results one after another, the `last` bit dropped).
//
// Semantics (those of fxpgen.sim.cocotb_core, without its idle cycles between
// programs): reset (rst high for RESET_CYCLES edges, then one idle edge), then
// the programs one after another. While program k runs, the instruction and data
// streams present its words and no others, each stream with its own random stalls
// (valid held low with probability p before each word, random payload meanwhile;
// ready low with probability p per cycle on the result stream). A HALT retires
// when `state` *enters* HALTED; the counters are read in that cycle (they are
// frozen while HALTED and cleared by the edge that accepts the next program's
// first instruction). Program k ends in the first cycle where
//   * state is HALTED, its n_halts HALTs have retired, all its instruction words
//     were taken and at least n_results result words arrived (n_results < 0:
//     regardless of results); or
//   * state is ERROR; or
//   * it has run max_cycles cycles (timed out).
// Status and counters are sampled in that cycle, its transfers complete, and
// the streams move on to program k + 1 (words not taken are dropped), which
// starts in the next cycle. After an ERROR or a timeout, and after the last
// program, the result stream first stays open for drain_cycles with the inputs
// idle (in-flight work lands; a stray word counts for program k), and after an
// ERROR or a timeout the core is then reset (memories persist). The wall-clock
// timeout or max_total_cycles stop the whole run; programs not reached are
// reported with "ran": false.
//
// TIMELINE is text, one event a line, cycles counted as the `cycles` counter counts
// them (1 = the first cycle after a program's first instruction is taken):
//   P <k>            program k starts
//   D <c>            the next instruction of the program was dispatched in cycle c
//                    (the `insns` counter went up)
//   M <c0> <c1>      vectors entered the array in cycles c0..c1 (`mac_cycles` went up)
//   B <c> <mask>     from cycle c on, the units busy are <mask> (bit 0 load, 1 store,
//                    2 loadw, 3 matmul, 4 vector: fxpgen.hw.controller.UNITS)
//
// OUT is JSON: {"cycles", "wall_s", "stopped", "programs": [{"ran", "results",
// "lasts", "state", "error", "error_pc", "counters", "halts": [{"cycle",
// "results", "counters"}], "timed_out", "timeout_reason", "halts_seen", "insns_sent",
// "data_sent", "sim_cycles", "start_cycle", "reset_before"}]}.

#include "Vcore.h"
#include "verilated.h"
#ifdef FXP_TRACE
#include "Vcore___024root.h"
#endif

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#if !defined(FXP_INSN_BITS) || !defined(FXP_DATA_BITS) || !defined(FXP_RESULT_BITS) \
    || !defined(FXP_COUNTER_BITS)
#error "build with -DFXP_INSN_BITS=... -DFXP_DATA_BITS=... -DFXP_RESULT_BITS=... -DFXP_COUNTER_BITS=..."
#endif

// Verilator escapes the "__" of Amaranth's flattened stream ports as "___05F".
#define INSN_PAYLOAD insn___05Fpayload
#define INSN_VALID insn___05Fvalid
#define INSN_READY insn___05Fready
#define DATA_PAYLOAD data___05Fpayload
#define DATA_VALID data___05Fvalid
#define DATA_READY data___05Fready
#define RESULT_PAYLOAD result___05Fpayload
#define RESULT_VALID result___05Fvalid
#define RESULT_READY result___05Fready

namespace {

constexpr int RUNNING = 1, HALTED = 2, ERROR = 3;   // CoreState values
constexpr int RESET_CYCLES = 4;
// Cycles between wall-clock checks (a steady_clock read costs ~20 ns, a cycle of
// the core a few microseconds).
constexpr uint64_t WALL_CHECK_EVERY = 4096;
const char* const COUNTER_NAMES[] = {"cycles", "mac_cycles", "stall_dispatch", "stall_data",
                                     "stall_result", "insns"};
constexpr int N_COUNTERS = 6;

// 32-bit words per value of `bits` bits; at least 2 so a 64-bit port reads two.
constexpr int words_for(int bits) { return bits > 64 ? (bits + 31) / 32 : 2; }

// --- port access for every Verilator port type (CData..QData and VlWide<N>) ---------

template <typename T>
inline void put_port(T& port, const uint32_t* w) {
    static_assert(std::is_integral<T>::value, "unexpected Verilator port type");
    uint64_t v = w[0];
    if (sizeof(T) > 4) v |= static_cast<uint64_t>(w[1]) << 32;
    port = static_cast<T>(v);
}

template <std::size_t N>
inline void put_port(VlWide<N>& port, const uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) port[i] = w[i];
}

template <typename T>
inline void get_port(const T& port, uint32_t* w) {
    static_assert(std::is_integral<T>::value, "unexpected Verilator port type");
    const uint64_t v = static_cast<uint64_t>(port);
    w[0] = static_cast<uint32_t>(v);
    w[1] = static_cast<uint32_t>(v >> 32);
}

template <std::size_t N>
inline void get_port(const VlWide<N>& port, uint32_t* w) {
    for (std::size_t i = 0; i < N; ++i) w[i] = port[i];
}

template <typename T>
inline uint64_t get_u64(const T& port) {
    static_assert(std::is_integral<T>::value, "status and counter ports are at most 64 bits");
    return static_cast<uint64_t>(port);
}

// --- random numbers: splitmix64, one independent generator per stream --------------

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
    bool stall(double p) { return p > 0.0 && uniform() < p; }
};

uint64_t stream_seed(uint64_t seed, uint64_t stream) {
    Rng r(seed ^ (0xA0761D6478BD642FULL * (stream + 1)));
    return r.next();
}

// --- words: fixed-stride arrays of little-endian 32-bit limbs -----------------------

struct Words {
    int bits = 0;
    int stride = 0;
    std::vector<uint32_t> limbs;
    Words(int bits_) : bits(bits_), stride(words_for(bits_)) {}
    std::size_t size() const { return stride ? limbs.size() / stride : 0; }
    const uint32_t* at(std::size_t i) const { return limbs.data() + i * stride; }
};

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void parse_hex(const std::string& text, Words& out, const char* what, std::size_t index) {
    std::size_t start = 0, end = text.size();
    while (start < end && (text[start] == ' ' || text[start] == '\t')) ++start;
    while (end > start && (text[end - 1] == ' ' || text[end - 1] == '\t' || text[end - 1] == '\r'))
        --end;
    if (end - start >= 2 && text[start] == '0' && (text[start + 1] == 'x' || text[start + 1] == 'X'))
        start += 2;
    if (start == end) fail(std::string(what) + " word " + std::to_string(index) + " is empty");
    const std::size_t base = out.limbs.size();
    out.limbs.resize(base + out.stride, 0);
    uint32_t* w = out.limbs.data() + base;
    int bit = 0;
    for (std::size_t i = end; i > start; --i) {
        const int v = hexval(text[i - 1]);
        if (v < 0)
            fail(std::string(what) + " word " + std::to_string(index) + " is not hex: " + text);
        if (v) {
            const int top = bit + (v >= 8 ? 4 : v >= 4 ? 3 : v >= 2 ? 2 : 1);
            if (top > out.bits)
                fail(std::string(what) + " word " + std::to_string(index) + " (" + text
                     + ") does not fit " + std::to_string(out.bits) + " bits");
            w[bit / 32] |= static_cast<uint32_t>(v) << (bit % 32);
        }
        bit += 4;
    }
}

std::string to_hex(const uint32_t* w, int bits) {
    static const char digits[] = "0123456789abcdef";
    std::string s;
    const int nibbles = (bits + 3) / 4;
    bool lead = true;
    for (int k = nibbles - 1; k >= 0; --k) {
        const int v = (w[(4 * k) / 32] >> ((4 * k) % 32)) & 0xF;
        if (lead && v == 0 && k > 0) continue;
        lead = false;
        s.push_back(digits[v]);
    }
    return "0x" + s;
}

// --- the job --------------------------------------------------------------------------

struct Program {
    uint64_t n_insns = 0, n_data = 0, n_halts = 0, max_cycles = 0;
    int64_t n_results = 0;
};

struct Ref {
    uint64_t program, at, base, first, count, run, stride;
};

struct Job {
    uint64_t seed = 0;
    double stall[3] = {0.0, 0.0, 0.0};
    uint64_t drain_cycles = 8;
    uint64_t max_total_cycles = 0;
    double timeout_s = 0.0;
    std::vector<Program> programs;
    Words insns{FXP_INSN_BITS};
    Words data{FXP_DATA_BITS};
    std::vector<Ref> refs;
};

std::string expect_line(std::istream& in, const char* what) {
    std::string line;
    if (!std::getline(in, line)) fail(std::string("job file ends before ") + what);
    return line;
}

template <typename... T>
void read_key(std::istream& in, const std::string& key, T&... values) {
    std::istringstream ss(expect_line(in, key.c_str()));
    std::string got;
    ss >> got;
    if (got != key) fail("job file: expected '" + key + "', found '" + got + "'");
    (ss >> ... >> values);
    if (ss.fail()) fail("job file: bad values on the '" + key + "' line");
}

Job read_job(const char* path) {
    std::ifstream in(path);
    if (!in) fail(std::string("cannot open job file ") + path);
    Job job;
    int version = 0;
    read_key(in, "fxpgen-native-job", version);
    if (version != 2) fail("job file version " + std::to_string(version) + " (this harness reads 2)");
    int wi = 0, wd = 0, wr = 0, wc = 0;
    read_key(in, "widths", wi, wd, wr, wc);
    if (wi != FXP_INSN_BITS || wd != FXP_DATA_BITS || wr != FXP_RESULT_BITS || wc != FXP_COUNTER_BITS)
        fail("job widths (insn " + std::to_string(wi) + ", data " + std::to_string(wd) + ", result "
             + std::to_string(wr) + ", counter " + std::to_string(wc)
             + ") differ from this model's (" + std::to_string(FXP_INSN_BITS) + ", "
             + std::to_string(FXP_DATA_BITS) + ", " + std::to_string(FXP_RESULT_BITS) + ", "
             + std::to_string(FXP_COUNTER_BITS) + ")");
    read_key(in, "seed", job.seed);
    read_key(in, "stall", job.stall[0], job.stall[1], job.stall[2]);
    for (double p : job.stall)
        if (!(p >= 0.0 && p < 1.0)) fail("stall probabilities must be in [0, 1)");
    read_key(in, "drain_cycles", job.drain_cycles);
    read_key(in, "max_total_cycles", job.max_total_cycles);
    read_key(in, "timeout_s", job.timeout_s);
    std::size_t n_programs = 0;
    read_key(in, "programs", n_programs);
    uint64_t sum_insns = 0, sum_data = 0;
    for (std::size_t k = 0; k < n_programs; ++k) {
        std::istringstream ss(expect_line(in, "a program line"));
        Program p;
        ss >> p.n_insns >> p.n_data >> p.n_halts >> p.n_results >> p.max_cycles;
        if (ss.fail()) fail("job file: bad program line " + std::to_string(k));
        sum_insns += p.n_insns;
        sum_data += p.n_data;
        job.programs.push_back(p);
    }
    std::size_t n = 0;
    read_key(in, "insns", n);
    job.insns.limbs.reserve(n * job.insns.stride);
    for (std::size_t i = 0; i < n; ++i) parse_hex(expect_line(in, "an insn word"), job.insns, "insn", i);
    read_key(in, "data", n);
    job.data.limbs.reserve(n * job.data.stride);
    for (std::size_t i = 0; i < n; ++i) parse_hex(expect_line(in, "a data word"), job.data, "data", i);
    read_key(in, "refs", n);
    for (std::size_t i = 0; i < n; ++i) {
        std::istringstream ss(expect_line(in, "a ref line"));
        Ref r;
        ss >> r.program >> r.at >> r.base >> r.first >> r.count >> r.run >> r.stride;
        if (ss.fail() || r.program >= job.programs.size() || r.base > r.program || r.run == 0
            || r.at + r.count > job.programs[r.program].n_data)
            fail("job file: bad ref line " + std::to_string(i));
        job.refs.push_back(r);
    }
    if (expect_line(in, "'end'") != "end") fail("job file: expected 'end' after the data words");
    if (sum_insns != job.insns.size() || sum_data != job.data.size())
        fail("job file: the programs declare " + std::to_string(sum_insns) + " insn and "
             + std::to_string(sum_data) + " data words, the file has "
             + std::to_string(job.insns.size()) + " and " + std::to_string(job.data.size()));
    return job;
}

// --- stream models --------------------------------------------------------------------

// Transmitter: presents words[pos..end) in order (one program's words; `seek`
// moves it to the next program's, dropping a word not taken); a presented word
// stays valid until taken.
struct Driver {
    const Words& words;
    Rng rng;
    double stall_prob;
    std::size_t pos = 0, end = 0;
    bool presenting = false;
    std::vector<uint32_t> garbage;

    Driver(const Words& w, uint64_t seed, double p)
        : words(w), rng(seed), stall_prob(p), garbage(w.stride, 0) {}

    void seek(std::size_t from, std::size_t to) {
        pos = from;
        end = to;
        presenting = false;
    }

    bool done() const { return pos >= end; }

    // Before the cycle's eval: set valid and payload.
    template <typename P>
    void drive(P& payload, CData& valid) {
        if (!presenting && pos < end) {
            if (rng.stall(stall_prob)) {
                for (auto& g : garbage) g = static_cast<uint32_t>(rng.next());
                put_port(payload, garbage.data());
            } else {
                put_port(payload, words.at(pos));
                presenting = true;
            }
        }
        valid = presenting ? 1 : 0;
    }

    // After the eval, before the edge: the edge completes a transfer if ready is high.
    void sample(CData ready) {
        if (presenting && ready) {
            ++pos;
            presenting = false;
        }
    }
};

struct Snapshot {
    int state = 0, error = 0;
    uint64_t error_pc = 0;
    uint64_t counters[N_COUNTERS] = {0, 0, 0, 0, 0, 0};
};

struct HaltRecord {
    uint64_t cycle;     // simulated cycle (from the start of the run) it retired in
    uint64_t results;   // result words of its program received before that cycle
    uint64_t counters[N_COUNTERS];
};

struct ProgramOut {
    bool ran = false;
    bool reset_before = false;
    Snapshot status;
    std::vector<HaltRecord> halts;
    std::vector<uint32_t> results;   // stride words_for(FXP_RESULT_BITS)
    bool timed_out = false;
    const char* timeout_reason = nullptr;
    uint64_t insns_sent = 0, data_sent = 0;
    uint64_t start_cycle = 0, sim_cycles = 0;
};

// The timeline of TIMELINE (see the header), from the top module's counters and the
// units' busy wires, sampled once a cycle like the counters.
struct Timeline {
    FILE* f = nullptr;
    bool running = false;
    uint64_t insns = 0, macs = 0, mac_first = 0, mac_last = 0;
    unsigned busy = 0;

    void program(std::size_t k) {
        std::fprintf(f, "P %zu\n", k);
        running = false;
    }

    // `cycles`: the counter now, so the previous cycle's number; `busy_now`: the mask.
    void sample(int state, uint64_t cycles, uint64_t insns_now, uint64_t macs_now, unsigned busy_now) {
        if (state == RUNNING && !running) {
            running = true;
            insns = macs = 0;
            busy = 0;
        }
        if (!running) return;
        if (insns_now > insns) std::fprintf(f, "D %" PRIu64 "\n", cycles);
        insns = insns_now;
        if (macs_now > macs) {
            if (mac_last && mac_last + 1 != cycles) flush_macs();
            if (!mac_last) mac_first = cycles;
            mac_last = cycles;
        }
        macs = macs_now;
        if (state == RUNNING && busy_now != busy) {
            std::fprintf(f, "B %" PRIu64 " %u\n", cycles + 1, busy_now);
            busy = busy_now;
        }
        if (state != RUNNING) {
            flush_macs();
            running = false;
        }
    }

    void flush_macs() {
        if (mac_last) std::fprintf(f, "M %" PRIu64 " %" PRIu64 "\n", mac_first, mac_last);
        mac_last = 0;
    }
};

class Harness {
  public:
    Harness(const Job& job)
        : job_(job),
          data_words_(job.data),
          ctx_(new VerilatedContext),
          insn_(job.insns, stream_seed(job.seed, 0), job.stall[0]),
          data_(data_words_, stream_seed(job.seed, 1), job.stall[1]),
          result_rng_(stream_seed(job.seed, 2)),
          result_word_(words_for(FXP_RESULT_BITS), 0) {
        top_.reset(new Vcore{ctx_.get(), "core"});
    }

    ~Harness() { top_->final(); }

    void trace_to(FILE* f) { timeline_.f = f; }

    std::vector<ProgramOut> run(uint64_t& total_cycles, double& wall_s, const char*& stopped) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::size_t n = job_.programs.size();
        std::vector<ProgramOut> out(n);
        std::vector<uint64_t> insn_start(n + 1, 0), data_start(n + 1, 0);
        for (std::size_t k = 0; k < n; ++k) {
            insn_start[k + 1] = insn_start[k] + job_.programs[k].n_insns;
            data_start[k + 1] = data_start[k] + job_.programs[k].n_data;
        }
        stopped = nullptr;
        std::size_t k = 0;            // current program
        uint64_t halts = 0;           // HALTs of the current program retired
        bool need_reset = true;
        int prev_state = 0;
        uint64_t next_wall_check = WALL_CHECK_EVERY;
        const int stride = words_for(FXP_RESULT_BITS);
        while (k < n) {
            ProgramOut& po = out[k];
            const Program& prog = job_.programs[k];
            if (need_reset) {
                reset();
                prev_state = static_cast<int>(top_->state);
                po.reset_before = k > 0;
                need_reset = false;
            }
            if (!po.ran) {
                po.ran = true;
                po.start_cycle = cycles_;
                fill_refs(k, data_start[k], out);
                if (timeline_.f) timeline_.program(k);
                insn_.seek(insn_start[k], insn_start[k + 1]);
                data_.seek(data_start[k], data_start[k + 1]);
            }
            // This cycle's inputs.
            insn_.drive(top_->INSN_PAYLOAD, top_->INSN_VALID);
            data_.drive(top_->DATA_PAYLOAD, top_->DATA_VALID);
            const bool result_ready = !result_rng_.stall(job_.stall[2]);
            top_->RESULT_READY = result_ready ? 1 : 0;
            top_->clk = 0;
            top_->eval();

            // Sample (the ReadOnly phase before the edge).
            const int state = static_cast<int>(top_->state);
            if (timeline_.f) sample_timeline(state);
            if (state == HALTED && prev_state != HALTED) {
                ++halts;
                HaltRecord h;
                h.cycle = cycles_;
                h.results = po.results.size() / stride;
                read_counters(h.counters);
                po.halts.push_back(h);
            }
            prev_state = state;
            bool ended = false;
            if (state == ERROR) {
                ended = need_reset = true;
            } else if (state == HALTED && halts >= prog.n_halts && insn_.done()
                       && (prog.n_results < 0
                           || po.results.size() / stride >= static_cast<uint64_t>(prog.n_results))) {
                ended = true;
            } else if (cycles_ - po.start_cycle >= prog.max_cycles) {
                ended = need_reset = true;
                po.timed_out = true;
                po.timeout_reason = "cycles";
            } else if (job_.max_total_cycles && cycles_ >= job_.max_total_cycles) {
                po.timed_out = true;
                po.timeout_reason = stopped = "total_cycles";
            } else if (job_.timeout_s > 0 && cycles_ >= next_wall_check) {
                next_wall_check = cycles_ + WALL_CHECK_EVERY;
                if (seconds_since(t0) > job_.timeout_s) {
                    po.timed_out = true;
                    po.timeout_reason = stopped = "wall";
                }
            }
            if (!ended && !stopped) {
                finish_cycle(result_ready, po);
                continue;
            }
            // As the cocotb harness when it stops waiting: status sampled now, this
            // cycle's transfers complete, the streams stop (words not taken are
            // dropped). After an error or a timeout, and after the last program,
            // the result stream stays open for drain_cycles with the inputs idle
            // (in-flight work lands, a stray word counts here) and a reset follows.
            snapshot(po.status);
            po.sim_cycles = cycles_ - po.start_cycle;
            finish_cycle(result_ready, po);
            if (stopped || need_reset || k + 1 == n) drain(po);
            po.insns_sent = insn_.pos - insn_start[k];
            po.data_sent = data_.pos - data_start[k];
            if (stopped) break;
            ++k;
            halts = 0;
        }
        total_cycles = cycles_;
        wall_s = seconds_since(t0);
        return out;
    }

  private:
    const Job& job_;
    Words data_words_;   // the job's data words, references filled as programs start
    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Vcore> top_;
    Driver insn_, data_;
    Rng result_rng_;
    std::vector<uint32_t> result_word_;
    uint64_t cycles_ = 0;
    Timeline timeline_;

#ifdef FXP_TRACE
    // The busy wires by their Verilator names (Verilog `fxpgen_core.load__busy`, the
    // "__" escaped as for the stream ports).
    void sample_timeline(int state) {
        const auto* r = top_->rootp;
        const unsigned busy = r->fxpgen_core__DOT__load___05Fbusy | r->fxpgen_core__DOT__store___05Fbusy << 1
                              | r->fxpgen_core__DOT__loadw___05Fbusy << 2
                              | r->fxpgen_core__DOT__matmul___05Fbusy << 3
                              | r->fxpgen_core__DOT__vector___05Fbusy << 4;
        timeline_.sample(state, get_u64(top_->cycles), get_u64(top_->insns),
                         get_u64(top_->mac_cycles), busy);
    }
#else
    void sample_timeline(int) {}
#endif

    // Program k's referenced data words from the results of earlier programs (a
    // word past the results received stays zero: that program failed).
    void fill_refs(std::size_t k, uint64_t data0, const std::vector<ProgramOut>& out) {
        const int rstride = words_for(FXP_RESULT_BITS), dstride = data_words_.stride;
        for (const Ref& r : job_.refs) {
            if (r.program != k) continue;
            for (uint64_t i = 0; i < r.count; ++i) {
                uint32_t* w = data_words_.limbs.data() + (data0 + r.at + i) * dstride;
                std::fill(w, w + dstride, 0u);
                uint64_t j = r.first + (i / r.run) * r.stride + i % r.run;
                for (uint64_t p = r.base; p < k; ++p) {
                    const uint64_t n = out[p].results.size() / rstride;
                    if (j >= n) {
                        j -= n;
                        continue;
                    }
                    const uint32_t* src = out[p].results.data() + j * rstride;
                    for (int b = 0; b < FXP_DATA_BITS; ++b)
                        if ((src[b / 32] >> (b % 32)) & 1u) w[b / 32] |= 1u << (b % 32);
                    break;
                }
            }
        }
    }

    static double seconds_since(std::chrono::steady_clock::time_point t0) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }

    // The rest of a cycle after sampling: count this cycle's transfers, then the edge.
    void finish_cycle(bool result_ready, ProgramOut& owner) {
        insn_.sample(top_->INSN_READY);
        data_.sample(top_->DATA_READY);
        if (result_ready && top_->RESULT_VALID) take_result(owner);
        edge();
    }

    // drain_cycles cycles with insn and data idle and the result stream open.
    void drain(ProgramOut& owner) {
        top_->INSN_VALID = 0;
        top_->DATA_VALID = 0;
        insn_.seek(insn_.pos, insn_.pos);
        data_.seek(data_.pos, data_.pos);
        for (uint64_t i = 0; i < job_.drain_cycles; ++i) {
            const bool ready = !result_rng_.stall(job_.stall[2]);
            top_->RESULT_READY = ready ? 1 : 0;
            top_->clk = 0;
            top_->eval();
            if (ready && top_->RESULT_VALID) take_result(owner);
            edge();
        }
    }

    void edge() {
        top_->clk = 1;
        top_->eval();
        ++cycles_;
    }

    // Every handshake idle, rst high for RESET_CYCLES edges, then one edge with rst low.
    void reset() {
        top_->INSN_VALID = 0;
        top_->DATA_VALID = 0;
        top_->RESULT_READY = 0;
        top_->rst = 1;
        for (int i = 0; i < RESET_CYCLES; ++i) {
            top_->clk = 0;
            top_->eval();
            edge();
        }
        top_->rst = 0;
        top_->clk = 0;
        top_->eval();
        edge();
    }

    void read_counters(uint64_t* c) const {
        c[0] = get_u64(top_->cycles);
        c[1] = get_u64(top_->mac_cycles);
        c[2] = get_u64(top_->stall_dispatch);
        c[3] = get_u64(top_->stall_data);
        c[4] = get_u64(top_->stall_result);
        c[5] = get_u64(top_->insns);
    }

    void snapshot(Snapshot& s) const {
        s.state = static_cast<int>(top_->state);
        s.error = static_cast<int>(top_->error);
        s.error_pc = get_u64(top_->error_pc);
        read_counters(s.counters);
    }

    void take_result(ProgramOut& owner) {
        get_port(top_->RESULT_PAYLOAD, result_word_.data());
        owner.results.insert(owner.results.end(), result_word_.begin(), result_word_.end());
    }
};

// --- output ------------------------------------------------------------------------------

void write_counters(FILE* f, const uint64_t* c) {
    std::fputc('{', f);
    for (int i = 0; i < N_COUNTERS; ++i)
        std::fprintf(f, "%s\"%s\": %" PRIu64, i ? ", " : "", COUNTER_NAMES[i], c[i]);
    std::fputc('}', f);
}

void write_output(const char* path, const std::vector<ProgramOut>& progs, uint64_t cycles,
                  double wall_s, const char* stopped) {
    const std::string tmp = std::string(path) + ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) fail("cannot write " + tmp);
    std::fprintf(f, "{\"cycles\": %" PRIu64 ", \"wall_s\": %.6f, \"stopped\": ", cycles, wall_s);
    if (stopped) std::fprintf(f, "\"%s\"", stopped); else std::fputs("null", f);
    std::fputs(", \"programs\": [", f);
    const int stride = words_for(FXP_RESULT_BITS);
    const int bus = FXP_RESULT_BITS - 1;
    std::vector<uint32_t> word(stride);
    for (std::size_t k = 0; k < progs.size(); ++k) {
        const ProgramOut& p = progs[k];
        std::fprintf(f, "%s\n {\"ran\": %s, \"reset_before\": %s, \"state\": %d, \"error\": %d, "
                        "\"error_pc\": %" PRIu64 ", \"counters\": ",
                     k ? "," : "", p.ran ? "true" : "false", p.reset_before ? "true" : "false",
                     p.status.state, p.status.error, p.status.error_pc);
        write_counters(f, p.status.counters);
        std::fputs(", \"halts\": [", f);
        for (std::size_t h = 0; h < p.halts.size(); ++h) {
            std::fprintf(f, "%s{\"cycle\": %" PRIu64 ", \"results\": %" PRIu64 ", \"counters\": ",
                         h ? ", " : "", p.halts[h].cycle, p.halts[h].results);
            write_counters(f, p.halts[h].counters);
            std::fputc('}', f);
        }
        std::fprintf(f, "], \"halts_seen\": %zu, \"timed_out\": %s, \"timeout_reason\": ",
                     p.halts.size(), p.timed_out ? "true" : "false");
        if (p.timeout_reason) std::fprintf(f, "\"%s\"", p.timeout_reason); else std::fputs("null", f);
        std::fprintf(f, ", \"insns_sent\": %" PRIu64 ", \"data_sent\": %" PRIu64
                        ", \"start_cycle\": %" PRIu64 ", \"sim_cycles\": %" PRIu64 ",\n  \"results\": [",
                     p.insns_sent, p.data_sent, p.start_cycle, p.sim_cycles);
        const std::size_t n_res = p.results.size() / stride;
        std::string lasts;
        for (std::size_t i = 0; i < n_res; ++i) {
            std::memcpy(word.data(), p.results.data() + i * stride, stride * sizeof(uint32_t));
            const bool last = (word[bus / 32] >> (bus % 32)) & 1u;
            word[bus / 32] &= ~(1u << (bus % 32));
            std::fprintf(f, "%s\"%s\"", i ? ", " : "", to_hex(word.data(), bus).c_str());
            lasts += i ? ", " : "";
            lasts += last ? "true" : "false";
        }
        std::fprintf(f, "],\n  \"lasts\": [%s]}", lasts.c_str());
    }
    std::fputs("]}\n", f);
    if (std::fclose(f) != 0) fail("cannot write " + tmp);
    if (std::rename(tmp.c_str(), path) != 0) fail("cannot rename " + tmp + " to " + path);
}

}  // namespace

int main(int argc, char** argv) {
#ifdef FXP_TRACE
    const int max_args = 4;
#else
    const int max_args = 3;
#endif
    if (argc < 3 || argc > max_args) {
        std::fprintf(stderr, "usage: %s JOB OUT%s\n", argv[0], max_args > 3 ? " [TIMELINE]" : "");
        return 2;
    }
    try {
        const Job job = read_job(argv[1]);
        uint64_t cycles = 0;
        double wall_s = 0.0;
        const char* stopped = nullptr;
        std::vector<ProgramOut> progs;
        {
            Harness h(job);
            FILE* timeline = argc > 3 ? std::fopen(argv[3], "w") : nullptr;
            if (argc > 3 && !timeline) fail(std::string("cannot write ") + argv[3]);
            h.trace_to(timeline);
            progs = h.run(cycles, wall_s, stopped);
            if (timeline && std::fclose(timeline) != 0) fail(std::string("cannot write ") + argv[3]);
        }
        write_output(argv[2], progs, cycles, wall_s, stopped);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fxpgen_native: %s\n", e.what());
        return 1;
    }
    return 0;
}
