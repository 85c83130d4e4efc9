// A simulated board: the emitted UARTLink top under Verilator, its serial line on stdin/stdout.
//
// usage: board CYCLES_PER_BIT
//
// stdin:  bytes for the host -> device line; each is sent on `rx` as 8N1, bit by bit.
// stdout: packets, each a one-byte tag then its body:
//           'D' u8 n, n bytes      bytes decoded from `tx` (8N1, sampled in each bit's middle)
//           'C' u64 cycles, f64 s, u64 taken, u8 quiet
//                                  cycles simulated so far, the seconds spent simulating them,
//                                  the bytes taken from stdin so far, and whether the board has
//                                  fallen quiet with every one of them sent (sent on falling
//                                  quiet, and every 2**20 cycles while running)
// A byte on `tx` with a bad start or stop bit is dropped, as a UART would.  End of stdin ends
// the run.  Errors are one line on stderr, exit status 1.
//
// The clock runs only while something is in flight: a byte on either line, bytes waiting for
// `rx`, or `busy`.  After 2 bit times of quiet the harness blocks on stdin and simulates nothing,
// so an idle board costs no CPU.  While the clock runs, stdin is looked at every 256 cycles (and
// whenever `rx` runs dry); a host writes each frame at once, so a frame arrives whole.

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

#include "Vprunefab_board.h"
#include "verilated.h"

namespace {

[[noreturn]] void fail(const char *what) {
    std::fprintf(stderr, "board harness: %s\n", what);
    std::exit(1);
}

void write_all(const void *data, size_t n) {
    auto *p = static_cast<const uint8_t *>(data);
    while (n) {
        ssize_t k = ::write(STDOUT_FILENO, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) std::exit(0);            // the host side went away: nothing left to do
        p += k;
        n -= size_t(k);
    }
}

// Read what stdin holds (waiting up to timeout_ms; -1: until something comes) into `pending`.
// Returns false at end of input.
bool take_input(std::deque<uint8_t> &pending, int timeout_ms, uint64_t &taken) {
    struct pollfd fd = {STDIN_FILENO, POLLIN, 0};
    int r = ::poll(&fd, 1, timeout_ms);
    if (r < 0) {
        if (errno == EINTR) return true;
        fail("cannot poll stdin");
    }
    if (r == 0) return true;
    uint8_t buf[4096];
    ssize_t k = ::read(STDIN_FILENO, buf, sizeof buf);
    if (k < 0) return errno == EINTR || errno == EAGAIN;
    if (k == 0) return false;
    pending.insert(pending.end(), buf, buf + k);
    taken += uint64_t(k);
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) fail("usage: board CYCLES_PER_BIT");
    const int n = std::atoi(argv[1]);
    if (n < 4) fail("cycles per bit must be at least 4");
    const uint64_t quiet_limit = 2 * uint64_t(n);

    std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    std::unique_ptr<Vprunefab_board> top{new Vprunefab_board{ctx.get()}};
    uint64_t cycles = 0;
    double seconds = 0.0;
    auto tick = [&] {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
        ++cycles;
    };

    top->clk = 0;
    top->rx = 1;
    top->rst = 1;
    top->eval();
    tick();
    tick();
    top->rst = 0;

    std::deque<uint8_t> pending;   // bytes waiting for the rx line
    uint32_t rx_shift = 0;         // bits of the byte on the rx line, next in bit 0
    int rx_bits = 0;               // bits of it still to send
    int rx_timer = 0;              // cycles left of the bit on the line
    int tx_timer = -1;             // cycles to the next sample; -1: tx idle
    int tx_count = 0;
    uint32_t tx_shift = 0;
    uint64_t quiet = 0, tx_quiet = 0;
    bool rx_was_busy = false;
    std::vector<uint8_t> out;
    uint64_t taken = 0;            // bytes read from stdin
    uint64_t reported = 0;         // cycles at the last report

    auto flush = [&] {
        size_t at = 0;
        while (at < out.size()) {
            uint8_t k = uint8_t(std::min<size_t>(out.size() - at, 255));
            uint8_t head[2] = {'D', k};
            write_all(head, 2);
            write_all(out.data() + at, k);
            at += k;
        }
        out.clear();
    };
    auto report = [&](bool quiet_now) {
        uint8_t packet[1 + 8 + 8 + 8 + 1];
        packet[0] = 'C';
        std::memcpy(packet + 1, &cycles, 8);
        std::memcpy(packet + 9, &seconds, 8);
        std::memcpy(packet + 17, &taken, 8);
        packet[25] = quiet_now;
        write_all(packet, sizeof packet);
        reported = cycles;
    };

    for (;;) {
        // Quiet: nothing on either line and nothing in progress.  Report and wait for the host.
        if (quiet > quiet_limit && pending.empty()) {
            flush();
            report(true);
            if (!take_input(pending, -1, taken)) break;
            quiet = 0;
            continue;
        }
        auto begun = std::chrono::steady_clock::now();
        // Run a slice of cycles between looks at stdin and stdout.
        for (int slice = 0; slice < 256; ++slice) {
            // host -> device: each bit held for n cycles
            if (rx_timer == 0) {
                if (rx_bits == 0 && !pending.empty()) {
                    rx_shift = (uint32_t(pending.front()) << 1) | (1u << 9);   // start, data, stop
                    pending.pop_front();
                    rx_bits = 10;
                }
                if (rx_bits) {
                    top->rx = rx_shift & 1;
                    rx_shift >>= 1;
                    --rx_bits;
                    rx_timer = n;
                }
            }
            if (rx_timer) --rx_timer;
            tick();
            // device -> host: sample each bit in its middle
            const bool tx = top->tx;
            if (tx_timer < 0) {
                if (!tx) {
                    tx_timer = n / 2 - 1;
                    tx_count = 0;
                    tx_shift = 0;
                }
            } else if (tx_timer == 0) {
                tx_shift |= uint32_t(tx) << tx_count;
                ++tx_count;
                tx_timer = n - 1;
                if (tx_count == 10) {
                    if ((tx_shift & 1) == 0 && (tx_shift >> 9) == 1) out.push_back(uint8_t(tx_shift >> 1));
                    tx_timer = -1;
                    tx_quiet = 0;
                }
            } else {
                --tx_timer;
            }
            const bool rx_busy = rx_bits || rx_timer;
            const bool idle = !(top->busy || !pending.empty() || rx_busy || tx_timer >= 0);
            quiet = idle ? quiet + 1 : 0;
            if (tx_timer < 0) ++tx_quiet;
            const bool went_dry = rx_was_busy && !rx_busy && pending.empty();
            rx_was_busy = rx_busy;
            if (went_dry || (quiet > quiet_limit && pending.empty())) break;
        }
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begun).count();
        // A burst on tx has ended (or grown long): pass it on.
        if (!out.empty() && (tx_quiet > quiet_limit || out.size() >= 255)) flush();
        if (cycles - reported >= (uint64_t(1) << 20)) report(false);
        if (!take_input(pending, 0, taken)) break;
    }
    flush();
    report(false);
    top->final();
    return 0;
}
