#!/usr/bin/env python3
"""Runs an experiment file (docs/EXPERIMENTS.md) against fresh dx hosts and writes a report.

Called by scripts/sweep, which builds dx and installs what this needs. For every experiment,
payload and thread count, --repeat times: the raw baseline against a reference host that serves
only raw channels, then a fresh dx-host with the experiment's host settings and `dx-guest bench
--json` with the guest settings, then the host stops. Outputs in --out: runs.csv (one row per run),
summary.csv (one row per experiment and thread count), report.md and chart.png.
"""
import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

WAIT_INTEGERS = {"spin_min", "spin_max", "spin_start", "yield_every", "sleep_timeout_ms"}
GUEST_ONLY_INTEGERS = {"turn_calls", "turn_quantum_us"}
PRESETS = {"auto", "balanced", "fair", "spin", "low-cpu", "yield"}
EXPERIMENT_KEYS = {"name", "hypothesis", "host", "guest", "workers", "threads", "payloads", "lanes"}
DEFAULT_KEYS = EXPERIMENT_KEYS - {"name", "hypothesis"}
FLAG = {"spin_min": "--spin-min", "spin_max": "--spin-max", "spin_start": "--spin-start",
        "yield_every": "--yield-every", "sleep_timeout_ms": "--sleep-timeout-ms", "turn_calls": "--turn-calls",
        "turn_quantum_us": "--turn-quantum-us"}


class FileError(Exception):
    pass


# MARK: - The experiment file

def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_side(where, side, value):
    if not isinstance(value, dict):
        raise FileError(f"{where}: field '{side}' must be an object of wait settings")
    allowed = WAIT_INTEGERS | {"preset", "relax", "pin"} | (GUEST_ONLY_INTEGERS if side == "guest" else set())
    for key, item in value.items():
        field = f"{side}.{key}"
        if key not in allowed:
            hint = " (guest only)" if key in GUEST_ONLY_INTEGERS else ""
            raise FileError(f"{where}: unknown field '{field}'{hint}; allowed: {', '.join(sorted(allowed))}")
        if key == "preset" and item not in PRESETS:
            raise FileError(f"{where}: field '{field}' must be one of {', '.join(sorted(PRESETS))}, got {item!r}")
        if key == "relax" and not isinstance(item, bool):
            raise FileError(f"{where}: field '{field}' must be true or false, got {item!r}")
        if key == "pin" and not (isinstance(item, str) and re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", item)):
            raise FileError(f"{where}: field '{field}' must be a CPU list like \"0\" or \"0-1\", got {item!r}")
        if key in WAIT_INTEGERS | GUEST_ONLY_INTEGERS and not (is_int(item) and 0 <= item <= 4_294_967_295):
            raise FileError(f"{where}: field '{field}' must be an integer from 0 to 4294967295, got {item!r}")
    if "sleep_timeout_ms" in value and not 1 <= value["sleep_timeout_ms"] <= 1000:
        raise FileError(f"{where}: field '{side}.sleep_timeout_ms' must be 1...1000 (every sleep is bounded)")
    low, start, high = value.get("spin_min"), value.get("spin_start"), value.get("spin_max")
    if low is not None and high is not None and low > high:
        raise FileError(f"{where}: field '{side}.spin_min' ({low}) is larger than '{side}.spin_max' ({high})")
    if start is not None and ((low is not None and start < low) or (high is not None and start > high)):
        raise FileError(f"{where}: field '{side}.spin_start' ({start}) is not between spin_min and spin_max")


def check_common(where, experiment):
    for key in ("threads", "payloads"):
        if key in experiment:
            values = experiment[key]
            limit = 16 if key == "threads" else 16 * 1024 * 1024  # 16: the raw baseline's channels
            low = 1 if key == "threads" else 0
            if not (isinstance(values, list) and values and all(is_int(v) and low <= v <= limit for v in values)):
                raise FileError(f"{where}: field '{key}' must be a non-empty list of integers from {low} to {limit}")
    if "workers" in experiment and not (is_int(experiment["workers"]) and 1 <= experiment["workers"] <= 16):
        raise FileError(f"{where}: field 'workers' must be an integer from 1 to 16")
    if "lanes" in experiment and not (is_int(experiment["lanes"]) and 1 <= experiment["lanes"] <= 1024):
        raise FileError(f"{where}: field 'lanes' must be an integer from 1 to 1024")
    for side in ("host", "guest"):
        if side in experiment:
            check_side(where, side, experiment[side])


def load_experiments(path):
    """The experiments with defaults applied; FileError names the experiment and the field."""
    try:
        with open(path) as handle:
            document = json.load(handle)
    except OSError as error:
        raise FileError(f"{path}: {error.strerror}")
    except json.JSONDecodeError as error:
        raise FileError(f"{path}: not valid JSON: {error}")
    if not isinstance(document, dict) or not isinstance(document.get("experiments"), list) or not document["experiments"]:
        raise FileError(f"{path}: expected an object with a non-empty list 'experiments'")
    unknown = set(document) - {"description", "defaults", "experiments"}
    if unknown:
        raise FileError(f"{path}: unknown top-level field '{sorted(unknown)[0]}'")
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise FileError(f"{path}: 'defaults' must be an object")
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise FileError(f"{path}: defaults: unknown field '{key}'")
    check_common(f"{path}: defaults", defaults)
    experiments, names = [], set()
    for index, experiment in enumerate(document["experiments"], 1):
        if not isinstance(experiment, dict):
            raise FileError(f"{path}: experiment #{index} must be an object")
        name = experiment.get("name")
        where = f"{path}: experiment '{name}' (#{index})" if isinstance(name, str) else f"{path}: experiment #{index}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
            raise FileError(f"{where}: field 'name' must be 1-40 of [A-Za-z0-9_-]")
        if name in names:
            raise FileError(f"{where}: field 'name': '{name}' is used twice")
        names.add(name)
        if not isinstance(experiment.get("hypothesis"), str) or not experiment["hypothesis"].strip():
            raise FileError(f"{where}: field 'hypothesis' must be a sentence")
        for key in experiment:
            if key not in EXPERIMENT_KEYS:
                raise FileError(f"{where}: unknown field '{key}'; allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")
        check_common(where, experiment)
        merged = {"host": {}, "guest": {}, "workers": 1, "threads": [1, 4, 8], "payloads": [64], "lanes": 8}
        merged.update({k: v for k, v in defaults.items()})
        merged.update(experiment)
        experiments.append(merged)
    return experiments


def wait_flags(settings):
    flags = []
    if "preset" in settings:
        flags += ["--wait", settings["preset"]]
    for key, flag in FLAG.items():
        if key in settings:
            flags += [flag, str(settings[key])]
    if settings.get("relax") is False:
        flags.append("--no-relax")
    if "pin" in settings:
        flags += ["--pin", settings["pin"]]
    return flags


def describe(settings):
    parts = [settings.get("preset", "fair")]
    for key in ("spin_min", "spin_max", "spin_start", "yield_every", "sleep_timeout_ms", "turn_calls", "turn_quantum_us"):
        if key in settings:
            parts.append(f"{key}={settings[key]}")
    if settings.get("relax") is False:
        parts.append("no-relax")
    if "pin" in settings:
        parts.append(f"pin={settings['pin']}")
    return " ".join(parts)


# MARK: - Running

class Sweep:
    def __init__(self, options, experiments):
        self.options = options
        self.experiments = experiments
        self.bin = options.bin
        self.prefix = f"sweep-{os.getpid()}"
        self.children = []
        self.reference_host = None
        self.reference = None
        self.interrupted = False
        self.rows = []       # one per run
        self.failures = []   # (experiment, payload, threads, message)
        self.unsteady = 0    # dx runs whose raw runs before and after disagree

    def cleanup(self):
        """Everything, the reference host included (the end, or Ctrl-C)."""
        # SIGTERM first, so that hosts remove their own region, socket and lock file.
        for child in self.children + ([self.reference_host] if self.reference_host else []):
            self.stop_host(child)
        self.children = []
        self.cleanup_regions(keep_reference=False)

    def cleanup_regions(self, keep_reference=True):
        """Regions, control sockets and lock files of this sweep's names (its own prefix) only."""
        runtime = os.path.join(os.environ["XDG_RUNTIME_DIR"], "dx") if os.environ.get("XDG_RUNTIME_DIR") \
            else f"/tmp/dx-{os.getuid()}"
        for directory, strip in (("/dev/shm", "dx."), ("/dev/shm", "dx-lock."), (runtime, "")):
            try:
                entries = os.listdir(directory)
            except OSError:
                continue
            for entry in entries:
                name = entry[len(strip):] if entry.startswith(strip) else None
                if name is None or not name.startswith(f"{self.prefix}-"):
                    continue
                if keep_reference and name.split(".sock")[0].split(".lock")[0] == self.reference:
                    continue
                try:
                    os.unlink(os.path.join(directory, entry))
                except OSError:
                    pass

    def start_host(self, name, experiment, threads, payload):
        lanes = max(experiment["lanes"], threads)
        command = [os.path.join(self.bin, "dx-host"), "--name", name, "--lanes", str(lanes),
                   "--slot-size", str(max(4096, payload)), "--workers", str(experiment["workers"]),
                   "--raw", "--log-level", "error"] + wait_flags(experiment["host"])
        host = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.children.append(host)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if host.poll() is not None:
                raise RuntimeError(f"dx-host exited with status {host.returncode}: {host.stderr.read().strip()}")
            probe = subprocess.run([os.path.join(self.bin, "dx-guest"), "call", "--name", name, "ping"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if probe.returncode == 0:
                return host
            time.sleep(0.05)
        raise RuntimeError("dx-host did not become ready within 10 s")

    def stop_host(self, host):
        if host.poll() is None:
            host.send_signal(signal.SIGTERM)
            try:
                host.wait(timeout=10)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()
        if host in self.children:
            self.children.remove(host)

    def bench(self, name, threads, payload, flags):
        options = self.options
        command = [os.path.join(self.bin, "dx-guest"), "bench", "--name", name, "--threads", str(threads),
                   "--duration", str(options.duration), "--payload", str(payload), "--json"] + flags
        timeout = 2 * (options.duration + 5) + 60
        guest = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(guest)
        try:
            out, err = guest.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            guest.kill()
            out, err = guest.communicate()
            raise RuntimeError(f"dx-guest bench ran past {timeout:.0f} s")
        finally:
            self.children.remove(guest)
        runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if guest.returncode != 0:
            said = [line.strip() for line in err.splitlines() if line.strip()]
            errors = [line for line in said if line.lower().startswith("error")]
            message = (errors or said or [f"exit status {guest.returncode}"])[0]
            raise RuntimeError(f"dx-guest bench failed: {message}")
        return runs

    def record(self, experiment, payload, threads, runs, repeat):
        """Brackets the dx run between raw runs: raw at the same thread count and at 1 thread before
        it, raw at 1 thread after it. The VM can switch speed between two runs; when the two raw
        one-thread runs differ by more than 25 %, the switch happened around the dx run and its
        ratios are left empty (the run still counts for its own figures)."""
        raw = [r for r in runs if r["mode"] == "raw"]
        floor = next((r for r in runs if r["mode"] == "floor"), None)
        dx = next(r for r in runs if r["mode"] == "dx")
        same = raw[0] if raw[0]["threads"] == threads else None
        before = next(r for r in raw[:2] if r["threads"] == 1)
        after = raw[-1]
        for role, run in [("floor-1", floor), ("raw-same", same), ("raw-1", None if threads == 1 else before),
                          ("raw-1-after", after)]:
            if run is not None:
                self.rows.append(self.row(experiment, payload, threads, repeat, role, run, None, None))
        steady = before["ops_per_sec"] > 0 and 0.8 <= after["ops_per_sec"] / before["ops_per_sec"] <= 1.25
        raw_one = (before["ops_per_sec"] + after["ops_per_sec"]) / 2
        ratio_same = dx["ops_per_sec"] / same["ops_per_sec"] if steady and same and same["ops_per_sec"] else None
        ratio_one = dx["ops_per_sec"] / raw_one if steady else None
        # The floor (the bare exchange, untimed) is the hardware's limit: dx over it ranks experiments
        # against the machine, not against another configuration.
        ratio_floor = dx["ops_per_sec"] / floor["ops_per_sec"] if steady and floor and floor["ops_per_sec"] else None
        if not steady:
            self.unsteady += 1
        self.rows.append(self.row(experiment, payload, threads, repeat, "dx", dx, ratio_same, ratio_one, ratio_floor))

    @staticmethod
    def row(experiment, payload, threads, repeat, role, run, ratio_same, ratio_one, ratio_floor=None):
        fairness = run["lane_min_ops"] / run["lane_max_ops"] if run["lane_max_ops"] else 0.0
        return {"experiment": experiment["name"], "payload": payload, "threads": threads, "repeat": repeat,
                "role": role, "run_threads": run["threads"], "ops_per_sec": run["ops_per_sec"],
                "p50_ns": run["p50_ns"], "p99_ns": run["p99_ns"], "p999_ns": run["p999_ns"], "max_ns": run["max_ns"],
                "exchange_p999_ns": run["exchange_p999_ns"], "lane_min_ops": run["lane_min_ops"],
                "lane_max_ops": run["lane_max_ops"], "slowest_over_fastest": round(fairness, 4),
                "cpu_us_per_op": run["cpu_us_per_op"], "errors": run["errors"],
                "ratio_raw_same": round(ratio_same, 4) if ratio_same is not None else "",
                "ratio_raw_1t": round(ratio_one, 4) if ratio_one is not None else "",
                "ratio_floor_1t": round(ratio_floor, 4) if ratio_floor is not None else ""}

    def measure(self, index, experiment, threads, payload):
        """One repeat: raw against the reference host (the experiment's host is not running, so a
        worker that never sleeps cannot slow the baseline down), dx against a fresh host, raw again."""
        runs = self.bench(self.reference, 1, payload, ["--baseline", "floor", "--baseline-only"])
        runs += self.bench(self.reference, threads, payload, ["--baseline", "raw", "--baseline-only"])
        name = f"{self.prefix}-{index}"
        host = self.start_host(name, experiment, threads, payload)
        try:
            runs += self.bench(name, threads, payload, wait_flags(experiment["guest"]))
        finally:
            self.stop_host(host)
            self.cleanup_regions()
        return runs + self.bench(self.reference, 1, payload, ["--baseline", "raw", "--baseline-only"])

    def start_reference(self):
        """A host that only serves the raw baseline channels; its worker sleeps while unused."""
        self.reference = f"{self.prefix}-reference"
        reference = {"lanes": 16, "workers": 1, "host": {"preset": "low-cpu"}}
        most = max(t for e in self.experiments for t in e["threads"])
        payload = max(p for e in self.experiments for p in e["payloads"])
        self.reference_host = self.start_host(self.reference, reference, most, payload)
        self.children.remove(self.reference_host)

    def steps(self):
        """Repeat by repeat, and within a repeat the experiments back to back at each payload and
        thread count: the machine's drift then touches every experiment alike."""
        combos = sorted({(p, t) for e in self.experiments for p in e["payloads"] for t in e["threads"]})
        return [(e, p, t, r) for r in range(self.options.repeat) for p, t in combos for e in self.experiments
                if p in e["payloads"] and t in e["threads"]]

    def run(self):
        steps = self.steps()
        started = time.monotonic()
        self.start_reference()
        failed = set()
        for index, (experiment, payload, threads, repeat) in enumerate(steps, 1):
            if self.interrupted:
                break
            if (experiment["name"], payload, threads) in failed:
                continue  # a configuration that failed once is not retried
            elapsed = time.monotonic() - started
            left = elapsed / (index - 1) * (len(steps) - index + 1) if index > 1 else None
            print(f"[{index}/{len(steps)}] repeat {repeat + 1}/{self.options.repeat}: {experiment['name']}, "
                  f"{threads} thread(s), {payload} B — elapsed {clock(elapsed)}"
                  + (f", about {clock(left)} left" if left is not None else ""), flush=True)
            try:
                self.record(experiment, payload, threads, self.measure(index, experiment, threads, payload), repeat)
            except Exception as error:  # recorded; the sweep goes on
                if self.interrupted:
                    break
                failed.add((experiment["name"], payload, threads))
                self.failures.append((experiment["name"], payload, threads, str(error)))
                print(f"    failed: {error}", flush=True)
        self.stop_host(self.reference_host)
        return time.monotonic() - started


def clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


# MARK: - Report

def summarise(rows, experiments):
    """Median figures per experiment, payload and thread count, over the dx runs."""
    summary = []
    for experiment in experiments:
        for payload in experiment["payloads"]:
            for threads in experiment["threads"]:
                dx = [r for r in rows if r["experiment"] == experiment["name"] and r["payload"] == payload
                      and r["threads"] == threads and r["role"] == "dx"]
                if not dx:
                    continue

                def median(key):
                    values = [r[key] for r in dx if r.get(key, "") != ""]
                    return statistics.median(values) if values else None
                summary.append({"experiment": experiment["name"], "payload": payload, "threads": threads,
                                "runs": len(dx), "ops_per_sec": median("ops_per_sec"), "p999_ns": median("p999_ns"),
                                "exchange_p999_ns": median("exchange_p999_ns"),
                                "slowest_over_fastest": median("slowest_over_fastest"),
                                "cpu_us_per_op": median("cpu_us_per_op"), "ratio_raw_same": median("ratio_raw_same"),
                                "ratio_raw_1t": median("ratio_raw_1t"), "ratio_floor_1t": median("ratio_floor_1t"),
                                "errors": sum(r["errors"] for r in dx)})
    return summary


def fmt(value, digits=2):
    return "—" if value is None else f"{value:,.{digits}f}"


def figure(summary, name, threads, payload):
    return next((s for s in summary if s["experiment"] == name and s["threads"] == threads
                 and s["payload"] == payload), None)


def ratio_key(summary):
    """The ratio experiments are ranked by: to the floor (the hardware's limit) when the runs have
    it, else to raw (sweeps written before the floor existed)."""
    if any(s.get("ratio_floor_1t") is not None for s in summary):
        return "ratio_floor_1t", "× floor 1T"
    return "ratio_raw_1t", "× raw 1T"


def ranking(summary, experiments, payload):
    """The best experiments for latency (1T ratio to the floor), throughput (8T) and fairness."""
    def best(threads, key, label):
        scored = [(figure(summary, e["name"], threads, payload), e["name"]) for e in experiments]
        scored = [(s[key], name, s) for s, name in scored if s and s[key] is not None]
        scored.sort(key=lambda item: (-item[0], item[1]))
        return label, threads, scored
    highest_threads = max((s["threads"] for s in summary if s["payload"] == payload), default=1)
    lowest_threads = min((s["threads"] for s in summary if s["payload"] == payload), default=1)
    key, _ = ratio_key(summary)
    return [best(lowest_threads, key, "latency"), best(highest_threads, key, "throughput"),
            best(highest_threads, "slowest_over_fastest", "fairness")]


def auto_comparison(summary, experiments, payload):
    """Per thread count: auto's ratio (to the floor, else raw) at 1T against the best other experiment's, and against
    the best other whose slowest lane got at least 0.8 x the fastest lane's round trips."""
    lines = []
    key, _ = ratio_key(summary)
    if not any(e["name"] == "auto" for e in experiments):
        return lines
    for threads in sorted({s["threads"] for s in summary if s["payload"] == payload}):
        auto = figure(summary, "auto", threads, payload)
        others = [figure(summary, e["name"], threads, payload) for e in experiments if e["name"] != "auto"]
        others = [o for o in others if o and o[key] is not None]
        if not auto or auto[key] is None or not others:
            continue
        cells = []
        for pool in (others, [o for o in others if (o["slowest_over_fastest"] or 0) >= 0.8]):
            if not pool:
                cells += ["—", "—"]
                continue
            top = max(pool, key=lambda o: o[key])
            share = auto[key] / top[key]
            cells += [f"{top['experiment']} {top[key]:.2f}",
                      f"{share:.2f} ({'within' if share >= 0.9 else 'more than'} 10 %)"]
        lines.append(f"| {threads} | {auto[key]:.2f} (lanes {fmt(auto['slowest_over_fastest'])}) | "
                     + " | ".join(cells) + " |")
    return lines


def write_report(out, source, options, experiments, rows, summary, failures, seconds, chart_ok, unsteady):
    lines = [f"# Sweep: {os.path.basename(source)}", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {os.cpu_count()} CPUs · "
             f"{cpu_model()} · {len(experiments)} experiments · --repeat {options.repeat} --duration {options.duration}"
             + (f" · {clock(seconds)}" if seconds is not None else " · rewritten from runs.csv"), "",
             "Every figure is the median over the repeats. Each dx run is bracketed by raw ping-pong runs against a "
             "reference host (raw at the same thread count and at 1 thread before it, at 1 thread after it); its "
             "ratios are to those runs, so they hold while the machine's speed drifts. When the two one-thread raw "
             "runs differ by more than 25 % the machine switched speed around the dx run, and its ratios are left "
             f"out ({unsteady} of {sum(1 for r in rows if r['role'] == 'dx')} dx runs here). Compare experiments "
             "by ratio, not by absolute round trips/s.", ""]
    for payload in sorted({p for e in experiments for p in e["payloads"]}):
        lines += [f"## Ranking ({payload}-byte payload)", ""]
        for label, threads, scored in ranking(summary, experiments, payload):
            key = "slowest/fastest lane" if label == "fairness" else ratio_key(summary)[1]
            podium = ", ".join(f"**{name}** {value:.2f}" if rank == 0 else f"{name} {value:.2f}"
                               for rank, (value, name, _) in enumerate(scored[:3]))
            lines.append(f"- Best for {label} ({threads}T, {key}): {podium or '—'}")
        comparison = auto_comparison(summary, experiments, payload)
        if comparison:
            lines += ["", f"`auto` against the best hand-tuned experiment ({ratio_key(summary)[1]}), and against the best one whose "
                      "slowest lane got at least 0.8 × the fastest lane's round trips:", "",
                      "| threads | auto | best other | auto / best | best fair other | auto / best fair |",
                      "|---:|---:|---|---|---|---|"] + comparison
        lines.append("")
    if chart_ok:
        lines += ["![round trips/s against threads](chart.png)", "",
                  "Round trips/s against threads; a red cross marks a run whose slowest lane got less than 0.8 × the "
                  "fastest lane's round trips.", ""]
    lines += ["## Experiments", ""]
    for experiment in experiments:
        lines += [f"### {experiment['name']}", "",
                  f"- **Hypothesis**: {experiment['hypothesis']}",
                  f"- **Host**: {describe(experiment['host'])}, {experiment['workers']} worker(s) · "
                  f"**Guest**: {describe(experiment['guest'])}"]
        for payload in experiment["payloads"]:
            parts = []
            for threads in experiment["threads"]:
                s = figure(summary, experiment["name"], threads, payload)
                if s is None:
                    parts.append(f"{threads}T failed")
                    continue
                parts.append(f"{threads}T={s['ops_per_sec'] / 1e6:.2f}M ({fmt(s['ratio_floor_1t'])}× floor 1T, "
                             f"{fmt(s['ratio_raw_1t'])}× raw 1T, "
                             f"p99.9 {fmt(s['p999_ns'] / 1000, 1)} µs, lanes {fmt(s['slowest_over_fastest'])}, "
                             f"{fmt(s['cpu_us_per_op'], 3)} CPU µs/op)")
            lines.append(f"- **Result** ({payload} B): " + "; ".join(parts) + ".")
        for name, payload, threads, message in failures:
            if name == experiment["name"]:
                lines.append(f"- **Failed** ({payload} B, {threads}T): {message}")
        lines.append("")
    lines += ["## All figures", "",
              "| experiment | payload | threads | round trips/s | × floor 1T | × raw same T | × raw 1T | p99.9 µs "
              "| exch p99.9 µs | slowest/fastest | CPU µs/op | errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['experiment']} | {s['payload']} | {s['threads']} | {s['ops_per_sec']:,.0f} | "
                     f"{fmt(s['ratio_floor_1t'])} | {fmt(s['ratio_raw_same'])} | {fmt(s['ratio_raw_1t'])} | {fmt(s['p999_ns'] / 1000, 1)} | "
                     f"{fmt(s['exchange_p999_ns'] / 1000, 1)} | {fmt(s['slowest_over_fastest'])} | "
                     f"{fmt(s['cpu_us_per_op'], 3)} | {s['errors']} |")
    lines += ["", f"Raw data: `runs.csv` ({len(rows)} runs), `summary.csv`."]
    with open(os.path.join(out, "report.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def write_csv(path, rows):
    if not rows:
        open(path, "w").close()
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_chart(out, experiments, summary):
    """chart.png with gnuplot: round trips/s against threads per experiment, as a multiple of the raw
    one-thread baseline (left; comparable across the VM's speed changes) and absolute (right).
    Points whose slowest lane got under 0.8 x the fastest lane's round trips are crossed."""
    payload = min(p for e in experiments for p in e["payloads"])
    data, unfair, names = [], [], []

    def number(value):
        return "NaN" if value is None else f"{value:.4f}"
    for experiment in experiments:
        points = sorted((s["threads"], s["ops_per_sec"], s["ratio_raw_1t"], s["slowest_over_fastest"])
                        for s in summary if s["experiment"] == experiment["name"] and s["payload"] == payload)
        if not points:
            continue
        names.append(experiment["name"])
        data.append("\n".join(f"{t} {ops / 1e6:.4f} {number(ratio)}" for t, ops, ratio, _ in points))
        unfair += [f"{t} {ops / 1e6:.4f} {number(ratio)}" for t, ops, ratio, fair in points
                   if fair is not None and fair < 0.8]
    if not names:
        return False
    with open(os.path.join(out, "chart.dat"), "w") as handle:
        handle.write("\n\n\n".join(data) + "\n")
    with open(os.path.join(out, "unfair.dat"), "w") as handle:
        handle.write("\n".join(unfair or ["NaN NaN NaN"]) + "\n")
    titles = " ".join(f'"{name}"' for name in names)
    most = max(s["threads"] for s in summary)
    last = len(names) - 1

    def plot(column):
        """One panel: the first eight experiments in solid lines, the rest dashed, unfair points crossed."""
        return (f"plot for [i=0:{min(last, 7)}] '{out}/chart.dat' index i using 1:{column} with linespoints lw 2 "
                f"lt i + 1 pt i + 1 title word(names, i + 1), "
                f"for [i=8:{last}] '{out}/chart.dat' index i using 1:{column} with linespoints lw 2 "
                f"lt i - 7 pt i + 1 dt 2 title word(names, i + 1), "
                f"'{out}/unfair.dat' using 1:{column} with points pt 2 ps 3 lw 2 lc rgb 'red' "
                f"title 'slowest lane < 0.8 x fastest'")
    script = f"""set terminal pngcairo size 1400,650 noenhanced
set output '{out}/chart.png'
set multiplot layout 1,2 title 'dx round trips/s against guest threads ({payload}-byte payload; medians of the repeats)'
set xlabel 'guest threads'
set grid
set logscale x 2
set xrange [0.8:{most * 1.25}]
set xtics (1, 2, 4, 8, 16)
set yrange [0:*]
names = '{titles.replace("'", "")}'
set key off
set ylabel 'round trips/s as a multiple of raw 1-thread'
{plot(3)}
set key outside right
set ylabel 'million round trips/s (absolute; the VM changes speed)'
{plot(2)}
unset multiplot
"""
    result = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if result.returncode != 0:
        print(f"warning: gnuplot failed: {result.stderr.strip()}", file=sys.stderr)
        return False
    return True


def read_runs(path):
    """runs.csv back into rows, with numbers as numbers (for --rerender)."""
    integers = {"payload", "threads", "repeat", "run_threads", "p50_ns", "p99_ns", "p999_ns", "max_ns",
                "exchange_p999_ns", "lane_min_ops", "lane_max_ops", "errors"}
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key in integers:
                    row[key] = int(value)
                elif key not in ("experiment", "role") and value != "":
                    row[key] = float(value)
            rows.append(row)
    return rows


# MARK: - Main

def main():
    parser = argparse.ArgumentParser(description="Run a dx experiment file and write a report.")
    parser.add_argument("file")
    parser.add_argument("--bin", required=True, help="directory of the built dx-host and dx-guest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--threads", help="comma-separated thread counts, for every experiment")
    parser.add_argument("--out", help="output directory (default: results/<file>-<time>)")
    parser.add_argument("--only", help="comma-separated experiment names to run")
    parser.add_argument("--rerender", metavar="DIR",
                        help="run nothing: write the report and chart again from DIR/runs.csv")
    options = parser.parse_args()
    if not 1 <= options.repeat <= 100 or not 0 < options.duration <= 600:
        parser.error("--repeat must be 1...100 and --duration in (0, 600]")
    try:
        experiments = load_experiments(options.file)
    except FileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.threads:
        if not re.fullmatch(r"\d+(,\d+)*", options.threads) or not all(
                1 <= int(t) <= 16 for t in options.threads.split(",")):
            parser.error("--threads takes a list like 1,4,8 of counts from 1 to 16 (the raw baseline's channels)")
        for experiment in experiments:
            experiment["threads"] = [int(t) for t in options.threads.split(",")]
    if options.only:
        wanted = options.only.split(",")
        missing = [name for name in wanted if name not in {e["name"] for e in experiments}]
        if missing:
            parser.error(f"--only: no experiment named {missing[0]}")
        experiments = [e for e in experiments if e["name"] in wanted]
    if options.rerender:
        rows = read_runs(os.path.join(options.rerender, "runs.csv"))
        names = {r["experiment"] for r in rows}
        experiments = [e for e in experiments if e["name"] in names]
        summary = summarise(rows, experiments)
        unsteady = sum(1 for r in rows if r["role"] == "dx" and r["ratio_raw_1t"] == "")
        write_csv(os.path.join(options.rerender, "summary.csv"), summary)
        chart_ok = write_chart(options.rerender, experiments, summary)
        write_report(options.rerender, options.file, options, experiments, rows, summary, [], None, chart_ok,
                     unsteady)
        print(f"report: {options.rerender}/report.md (rewritten from runs.csv)")
        return 0
    stem = os.path.splitext(os.path.basename(options.file))[0]
    out = options.out or os.path.join("results", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)

    sweep = Sweep(options, experiments)

    def interrupt(signum, frame):
        sweep.interrupted = True
        sweep.cleanup()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        seconds = sweep.run()
    except (RuntimeError, OSError) as error:  # the reference host did not start: nothing can be measured
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        sweep.cleanup()
    summary = summarise(sweep.rows, experiments)
    write_csv(os.path.join(out, "runs.csv"), sweep.rows)
    write_csv(os.path.join(out, "summary.csv"), summary)
    chart_ok = write_chart(out, experiments, summary)
    write_report(out, options.file, options, experiments, sweep.rows, summary, sweep.failures, seconds, chart_ok,
                 sweep.unsteady)
    print(f"report: {out}/report.md ({len(sweep.rows)} runs, {len(sweep.failures)} failed steps)")
    if sweep.interrupted:
        print("interrupted: the report covers what ran", file=sys.stderr)
        return 130
    return 0 if not sweep.failures else 1


if __name__ == "__main__":
    sys.exit(main())
