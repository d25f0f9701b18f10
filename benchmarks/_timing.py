"""Side-by-side timing on a shared machine: interleaved repetitions, medians, and the foreign CPU load seen.

The foreign load is the share of the machine's CPU time used by other processes during a timed call
(/proc/stat busy time minus this process's and its children's CPU time); runs above `max_foreign` are repeated.
"""
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _busy_jiffies():
    with open("/proc/stat") as f:
        parts = [int(v) for v in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]) - idle, sum(parts[:8])


def _own_cpu():
    """CPU seconds of this process and all its children, finished or running (worker processes count as ours)."""
    import psutil
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            live += t.user + t.system
        except psutil.Error:
            pass
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + live


def timed(fn, max_foreign=0.10, tries=5):
    """(seconds, foreign share) of one call of fn, retried while other processes load the machine."""
    hz = os.sysconf("SC_CLK_TCK")
    for _ in range(tries):
        b0, t0, own0, w0 = *_busy_jiffies(), _own_cpu(), time.perf_counter()
        fn()
        wall = time.perf_counter() - w0
        b1, t1 = _busy_jiffies()
        foreign = max(0.0, ((b1 - b0) / hz - (_own_cpu() - own0))) / max(1e-9, (t1 - t0) / hz)
        if foreign <= max_foreign:
            break
    return wall, foreign


def compare(variants, reps=7, warmup=1, max_foreign=0.10):
    """Time each variant `reps` times, interleaved; returns {name: (median seconds, max foreign share)}.
    max_foreign=1 never repeats a call (a dedicated GPU machine, where a retry only costs lent time)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    foreign = {name: 0.0 for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t, f = timed(fn, max_foreign)
            times[name].append(t)
            foreign[name] = max(foreign[name], f)
    return {name: (statistics.median(times[name]), foreign[name]) for name in variants}


def report(title, results, baseline):
    print(title)
    base = results[baseline][0]
    for name, (t, f) in results.items():
        print(f"  {name:40s} {t * 1000:9.1f} ms   time x{t / base:6.2f}   speed-up x{base / t:5.2f}   "
              f"(vs {baseline}; foreign load <= {100 * f:.0f} %)")
