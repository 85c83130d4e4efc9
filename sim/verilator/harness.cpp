// Whole-network runs of the emitted engine under Verilator, without a Python bench.
//
// usage: harness RUN_FILE RESULT_FILE [WAVES.vcd]
//
// RUN_FILE (little-endian): "PFRN", u32 version 1, u32 n_load, u32 n_images,
// u32 words_per_image, u32 classes, u32 layers, u64 max_cycles_per_image,
// u64 load words [n_load], u64 image words [n_images * words_per_image].
// RESULT_FILE: "PFRS", u32 version 1, u64 simulated cycles, f64 seconds spent simulating,
// then per image: i32 logits [classes], u32 total_cycles, u32 mac_cycles, u32 layer_cycles [layers].
//
// Streams run without stalls: i_load's valid and o_logits' ready stay high, so the counters are
// those of a host that is never the bottleneck.  Errors are one line on stderr, exit status 1.
// Verilator spells the Verilog ports' "__" as "___05F" (i_load__valid -> i_load___05Fvalid).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "Vprunefab_engine.h"
#include "verilated.h"
#ifdef PRUNEFAB_TRACE
#include "verilated_vcd_c.h"
#endif

namespace {

[[noreturn]] void fail(const char *what) {
    std::fprintf(stderr, "harness: %s\n", what);
    std::exit(1);
}

template <typename T> T take(FILE *f) {
    T v;
    if (std::fread(&v, sizeof v, 1, f) != 1) fail("run file is truncated");
    return v;
}

template <typename T> void put(FILE *f, T v) {
    if (std::fwrite(&v, sizeof v, 1, f) != 1) fail("cannot write the result file");
}

struct Engine {
    std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    std::unique_ptr<Vprunefab_engine> top;
    uint64_t cycles = 0;
#ifdef PRUNEFAB_TRACE
    std::unique_ptr<VerilatedVcdC> vcd;
#endif

    Engine() : top(new Vprunefab_engine{ctx.get()}) {}

    void dump() {
#ifdef PRUNEFAB_TRACE
        if (vcd) vcd->dump(ctx->time());
#endif
    }

    // One clock cycle: inputs set by the caller are sampled at this rising edge.
    void tick() {
        top->clk = 1;
        top->eval();
        ctx->timeInc(5000);   // a 10 ns clock, in the default 1 ps precision
        dump();
        top->clk = 0;
        top->eval();
        ctx->timeInc(5000);   // a 10 ns clock, in the default 1 ps precision
        dump();
        ++cycles;
    }

    void settle() { top->eval(); }
};

}  // namespace

int main(int argc, char **argv) {
    if (argc < 3) fail("usage: harness RUN_FILE RESULT_FILE [WAVES.vcd]");
    FILE *in = std::fopen(argv[1], "rb");
    if (!in) fail("cannot open the run file");
    char magic[4];
    if (std::fread(magic, 1, 4, in) != 4 || std::memcmp(magic, "PFRN", 4) != 0) fail("not a run file");
    if (take<uint32_t>(in) != 1) fail("run file version is not 1");
    uint32_t n_load = take<uint32_t>(in), n_images = take<uint32_t>(in);
    uint32_t per_image = take<uint32_t>(in), classes = take<uint32_t>(in), layers = take<uint32_t>(in);
    uint64_t max_cycles = take<uint64_t>(in);
    std::vector<uint64_t> load(n_load), images(uint64_t(n_images) * per_image);
    for (auto &w : load) w = take<uint64_t>(in);
    for (auto &w : images) w = take<uint64_t>(in);
    std::fclose(in);

    Engine e;
    auto &t = *e.top;
#ifdef PRUNEFAB_TRACE
    if (argc > 3) {
        e.ctx->traceEverOn(true);
        e.vcd.reset(new VerilatedVcdC);
        t.trace(e.vcd.get(), 99);
        e.vcd->open(argv[3]);
    }
#else
    if (argc > 3) fail("this harness was built without waveform support");
#endif
    t.clk = 0;
    t.rst = 1;
    t.start = 0;
    t.i_load___05Fvalid = 0;
    t.o_logits___05Fready = 1;
    t.layer_sel = 0;
    e.settle();
    e.tick();
    e.tick();
    t.rst = 0;

    std::vector<int32_t> logits;
    std::vector<uint32_t> counters;
    auto clock_start = std::chrono::steady_clock::now();

    auto send = [&](const uint64_t *words, size_t n) {
        t.i_load___05Fvalid = 1;
        for (size_t i = 0; i < n;) {
            t.i_load___05Fpayload = words[i];
            e.settle();
            bool taken = t.i_load___05Fready;
            e.tick();
            if (taken) ++i;
        }
        t.i_load___05Fvalid = 0;
    };

    send(load.data(), load.size());
    for (uint32_t img = 0; img < n_images; ++img) {
        send(&images[uint64_t(img) * per_image], per_image);
        t.start = 1;
        e.tick();
        t.start = 0;
        uint32_t got = 0;
        uint64_t begun = e.cycles;
        for (;;) {
            // No input changes while the engine runs, so the outputs settled by the last
            // tick are current: one evaluation per clock edge.
            if (t.o_logits___05Fvalid) {
                logits.push_back(int32_t(t.o_logits___05Fpayload));
                ++got;
            }
            bool finished = t.done && got >= classes;
            e.tick();
            if (finished) break;
            if (e.cycles - begun > max_cycles) fail("the engine did not finish within the cycle budget");
        }
        if (got != classes) fail("the engine gave a different number of logits than the network has classes");
        counters.push_back(t.total_cycles);
        counters.push_back(t.mac_cycles);
        for (uint32_t l = 0; l < layers; ++l) {
            t.layer_sel = l;   // the counters are a memory read: one cycle later
            e.tick();
            counters.push_back(t.layer_cycles);
        }
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - clock_start).count();
#ifdef PRUNEFAB_TRACE
    if (e.vcd) e.vcd->close();
#endif
    t.final();

    FILE *out = std::fopen(argv[2], "wb");
    if (!out) fail("cannot open the result file");
    std::fwrite("PFRS", 1, 4, out);
    put<uint32_t>(out, 1);
    put<uint64_t>(out, e.cycles);
    put<double>(out, seconds);
    for (uint32_t img = 0; img < n_images; ++img) {
        for (uint32_t k = 0; k < classes; ++k) put<int32_t>(out, logits[img * classes + k]);
        for (uint32_t k = 0; k < layers + 2; ++k) put<uint32_t>(out, counters[img * (layers + 2) + k]);
    }
    if (std::fclose(out) != 0) fail("cannot write the result file");
    return 0;
}
