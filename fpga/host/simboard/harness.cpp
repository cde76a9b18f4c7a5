// hbfp-hw simulated board: GemmSystem (Verilator model) <-> stdin/stdout bytes.
#include "V__TOP__.h"
#include "verilated.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>
#include <vector>

static double now_s() {              // CLOCK_MONOTONIC: the clock of Python's time.monotonic
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void write_all(std::vector<uint8_t>& out) {
    size_t off = 0;
    while (off < out.size()) {
        ssize_t n = write(1, out.data() + off, out.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            std::exit(0);  // host went away
        }
        off += (size_t)n;
    }
    out.clear();
}

static void sleep_s(double s) {
    if (s <= 0) return;
    if (s > 0.001) s = 0.001;
    struct timespec ts;
    ts.tv_sec = 0;
    ts.tv_nsec = (long)(s * 1e9);
    nanosleep(&ts, nullptr);
}

int main(int argc, char** argv) {
    uint64_t timeout_cycles = 2000;
    double baud = 0, vclock = 0;
    int idle_ms = 2;
    size_t rx_fifo = 0;
    const char* stats_path = nullptr;
    const char* trace_path = nullptr;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char* v = argv[i + 1];
        if (!std::strcmp(argv[i], "--timeout-cycles")) timeout_cycles = std::strtoull(v, 0, 10);
        else if (!std::strcmp(argv[i], "--baud")) baud = std::atof(v);
        else if (!std::strcmp(argv[i], "--vclock")) vclock = std::atof(v);
        else if (!std::strcmp(argv[i], "--idle-ms")) idle_ms = std::atoi(v);
        else if (!std::strcmp(argv[i], "--rx-fifo")) rx_fifo = std::strtoull(v, 0, 10);
        else if (!std::strcmp(argv[i], "--stats")) stats_path = v;
        else if (!std::strcmp(argv[i], "--trace")) trace_path = v;
    }
    std::signal(SIGPIPE, SIG_IGN);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

    VerilatedContext* ctx = new VerilatedContext;
    V__TOP__* top = new V__TOP__{ctx};
    top->clk = 0;
    top->rst = 1;
    top->i_stream___05Fvalid = 0;
    top->o_stream___05Fready = 0;
    top->eval();
    for (int i = 0; i < 4; i++) {
        top->clk = 1; top->eval();
        top->clk = 0; top->eval();
    }
    top->rst = 0;
    top->eval();

    static uint8_t buf[1 << 16];
    std::vector<uint8_t> in, out;
    in.reserve(1 << 16);
    out.reserve(1 << 16);
    size_t head = 0;
    // Virtual time: in[head, fifo_end) is in the board's receive FIFO (arrived, not yet taken
    // by the device), in[fifo_end, ...) is still on the line. A byte that arrives while the
    // FIFO holds rx_fifo bytes is lost, as the board's UART receiver drops it (0: no limit).
    size_t fifo_end = 0;
    uint64_t overruns = 0;
    // Line model. Wall pacing (baud > 0, vclock == 0): bytes move at most at baud / 10 per
    // second of wall time. Virtual time (vclock > 0): a virtual clock advances 1 / vclock per
    // model cycle and by the wall time the harness waits for the host; input bytes arrive
    // back to back at the line rate into an RX FIFO, the device's output leaves at the line
    // rate (full duplex, like a UART with a receive FIFO).
    const bool virt = baud > 0 && vclock > 0;
    const bool pacing = baud > 0 && !virt;
    const double byte_time = baud > 0 ? 10.0 / baud : 0.0;
    const double burst = 64 * byte_time;
    double next_in = 0, next_out = 0;
    double vt = 0, last_arr = 0;
    // While the harness waits for the host (no input, nothing to do), the line idles in real
    // time: when input comes, virtual time is at least the virtual time when the wait began
    // plus the wall time it lasted (including any idle fast-forward cycles run meanwhile).
    bool waiting = false;
    double wait_vt = 0, wait_wall = 0, host_wait = 0;
    bool last_iready = true;
    std::vector<double> arr;
    uint64_t total_cycles = 0, bytes_in = 0, bytes_out = 0;
    int stats_fd = stats_path ? open(stats_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    // Trace (virtual time only): one line per byte that moves, "i <vt> <arrival> <byte>" for
    // a request byte the device takes and "o <vt> <byte>" for a reply byte, and "w <from>
    // <to>" for a wait for the host.
    FILE* trace = trace_path ? std::fopen(trace_path, "w") : nullptr;
    auto write_stats = [&]() {
        if (stats_fd < 0) return;
        char line[240];
        int n = std::snprintf(line, sizeof line, "%.9f %llu %llu %llu %.9f %.9f %llu\n", vt,
                              (unsigned long long)total_cycles, (unsigned long long)bytes_in,
                              (unsigned long long)bytes_out, host_wait, wait_wall,
                              (unsigned long long)overruns);
        if (pwrite(stats_fd, line, n, 0) < 0) stats_fd = -1;
    };
    auto take_input = [&](ssize_t n) {
        if (virt && waiting) {
            double waited = wait_vt + (now_s() - wait_wall);
            if (waited > vt) {
                if (trace) std::fprintf(trace, "w %.9f %.9f\n", vt, waited);
                host_wait += waited - vt;
                vt = waited;
            }
        }
        waiting = false;
        if (head == in.size()) { in.clear(); arr.clear(); head = 0; fifo_end = 0; }
        in.insert(in.end(), buf, buf + n);
        if (virt) {
            for (ssize_t i = 0; i < n; i++) {
                last_arr = (last_arr + byte_time > vt ? last_arr + byte_time : vt);
                arr.push_back(last_arr);
            }
        }
    };

    uint64_t quiet = 0;               // cycles since a byte moved or the device was busy
    const uint64_t settle = 64;       // cycles to run after the last activity
    uint64_t ff_target = 0;           // run until quiet reaches this (idle fast-forward)
    bool ff_done = true;              // the last silence has been fast-forwarded
    bool eof = false;

    for (;;) {
        bool pending = head < in.size();
        bool active = pending || top->busy || top->o_stream___05Fvalid || quiet < settle
                      || quiet < ff_target;
        if (!pending && !eof) {
            int to = 0;
            if (!active) {
                write_all(out);
                to = ff_done ? -1 : idle_ms;
            } else if (out.size() >= 4096) {
                write_all(out);
            }
            if (!active || (quiet & 255) == 0) {
                struct pollfd p = {0, POLLIN, 0};
                if (!active) {
                    if (!waiting) { waiting = true; wait_vt = vt; wait_wall = now_s(); }
                    write_stats();
                    if (trace) std::fflush(trace);
                }
                int r = poll(&p, 1, to);
                if (r > 0) {
                    ssize_t n = read(0, buf, sizeof buf);
                    if (n > 0) {
                        take_input(n);
                        ff_done = false;
                        ff_target = 0;
                    } else if (n == 0) {
                        eof = true;
                    }
                } else if (r == 0 && !active) {
                    // The line has been silent for idle_ms: let that time pass on the device.
                    ff_target = quiet + timeout_cycles + 16;
                    ff_done = true;
                }
            }
            pending = head < in.size();
            active = pending || top->busy || top->o_stream___05Fvalid || quiet < settle
                     || quiet < ff_target;
        } else if (pending && !eof && (total_cycles & 1023) == 0) {
            // Take what the host has sent meanwhile (it arrives at the line rate from now on).
            struct pollfd p = {0, POLLIN, 0};
            if (poll(&p, 1, 0) > 0) {
                ssize_t n = read(0, buf, sizeof buf);
                if (n > 0) take_input(n);
                else if (n == 0) eof = true;
            }
        }
        if (eof && !pending && !active) break;
        if (!active) continue;

        double t = pacing ? now_s() : 0;
        while (virt && fifo_end < in.size() && arr[fifo_end] <= vt) {
            if (rx_fifo && fifo_end - head >= rx_fifo) {
                in.erase(in.begin() + fifo_end);
                arr.erase(arr.begin() + fifo_end);
                overruns++;
            } else {
                fifo_end++;
            }
        }
        pending = head < in.size();
        bool can_in = pending && (!pacing || t >= next_in) && (!virt || head < fifo_end);
        bool can_out = (!pacing || t >= next_out) && (!virt || vt >= next_out);
        if (virt && !top->busy && (!can_in || !last_iready) && top->o_stream___05Fvalid
                && !can_out) {
            // Nothing to do but wait for the line: skip to the end of the byte being sent, or
            // to the arrival of the next request byte if the device can take it before then.
            double to = next_out;
            if (last_iready && fifo_end < in.size() && arr[fifo_end] < to) to = arr[fifo_end];
            if (to > vt) vt = to;
            continue;
        }
        if (virt && pending && !can_in && !top->busy && !top->o_stream___05Fvalid) {
            vt = arr[head];           // waiting for the next byte on the line
            continue;
        }
        if (pacing && !top->busy && !can_out && top->o_stream___05Fvalid) {
            sleep_s(next_out - t);
            continue;
        }
        if (pacing && pending && !can_in && !top->busy && !top->o_stream___05Fvalid
                && quiet >= settle) {
            sleep_s(next_in - t);
            continue;
        }
        top->i_stream___05Fvalid = can_in;
        top->i_stream___05Fpayload = can_in ? in[head] : 0;
        top->o_stream___05Fready = can_out;
        top->clk = 0;
        top->eval();
        last_iready = top->i_stream___05Fready;
        bool in_fire = can_in && last_iready;
        bool out_fire = can_out && top->o_stream___05Fvalid;
        uint8_t ob = top->o_stream___05Fpayload;
        bool busy = top->busy;
        top->clk = 1;
        top->eval();
        if (virt) vt += 1.0 / vclock;
        total_cycles++;
        if (trace && virt && in_fire)
            std::fprintf(trace, "i %.9f %.9f %u\n", vt, arr[head], in[head]);
        if (trace && virt && out_fire) std::fprintf(trace, "o %.9f %u\n", vt, ob);
        if (in_fire) {
            head++;
            bytes_in++;
            if (pacing) next_in = (next_in > t - burst ? next_in : t - burst) + byte_time;
        }
        if (out_fire) {
            out.push_back(ob);
            bytes_out++;
            if (virt) next_out = vt + byte_time;
            if (pacing) {
                next_out = (next_out > t - burst ? next_out : t - burst) + byte_time;
                write_all(out);
            }
        }
        if (in_fire || out_fire || busy) quiet = 0; else quiet++;
        if (!out.empty() && (total_cycles & 511) == 0) write_all(out);   // stream replies
    }
    write_all(out);
    write_stats();
    if (trace) std::fclose(trace);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
