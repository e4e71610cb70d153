#!/usr/bin/env bash
# Manual benchmark, not part of CI: the reference query on Spark Structured
# Streaming (local[1] and local[2]) and on Sluice (the reference_query bench,
# with 1 and then 2 worker threads) over the same events, with wall and CPU
# times, events/s per core, and a check that both engines emit the same
# windows.
#
#   bench/spark/run.sh                              # 5,000,000 events
#   SLUICE_BENCH_EVENTS=1000000 bench/spark/run.sh
#   SLUICE_BENCH_RUNS=5 bench/spark/run.sh          # Sluice's median of 5 runs (default 3)
#
# Installs Java 17 (Debian) if `java` is missing and PySpark into
# $SLUICE_CACHE/spark-venv; keeps the data set in $SLUICE_CACHE/spark-bench.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/bench/spark"
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
venv="$cache/spark-venv"
events="${SLUICE_BENCH_EVENTS:-5000000}"
# A Sluice run takes a second or two, where a shared machine's noise shows
# most: the median of a few. Spark's runs last half a minute each.
runs="${SLUICE_BENCH_RUNS:-3}"
work="$cache/spark-bench/$events"
data="$work/events.jsonl"
# The bench's own output beside its data (see runner/benches/reference_query.rs).
sluice_table="$work/events.sluice/table"
# Sluice's epochs read 1,000,000 lines (maxLinesPerTrigger in the bench), so
# Spark gets the same events as files of that many lines, one per micro-batch:
# both engines then advance the watermark after the same events.
batch_lines=1000000
# Spark binds to loopback only.
export SPARK_LOCAL_IP=127.0.0.1
export SLUICE_BENCH_EVENTS="$events" SLUICE_BENCH_DATA="$data"

if ! command -v java >/dev/null; then
    apt-get update -q && apt-get install -y -q openjdk-17-jre-headless
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"

cd "$root"
bench=$(cargo bench -p sluice-runner --bench reference_query --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "reference_query" and m.get("executable"):
        print(m["executable"])')
mkdir -p "$work"
if [ ! -f "$data" ]; then
    echo "== writing $events events to $data (a first, unmeasured Sluice run)"
    "$bench" --bench
fi
input="$work/spark-input"
if [ ! -d "$input" ]; then
    rm -rf "$input.partial" && mkdir -p "$input.partial"
    split -l "$batch_lines" -d -a 4 --additional-suffix=.jsonl "$data" "$input.partial/part-"
    # Spark's file source takes the oldest files first: order mtimes by name.
    i=0
    for file in "$input.partial"/part-*.jsonl; do
        touch -d "@$((1700000000 + i))" "$file"
        i=$((i + 1))
    done
    mv "$input.partial" "$input"
fi

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== Sluice (cargo bench -p sluice-runner --bench reference_query: 1, then 2 worker threads, the median of $runs runs each)"
SLUICE_BENCH_THREADS=1,2 SLUICE_BENCH_RUNS="$runs" "$bench" --bench | tee "$work/sluice.out"

for cores in 1 2; do
    out="$work/spark-local$cores"
    rm -rf "$out"
    echo "== Spark Structured Streaming, local[$cores]"
    /usr/bin/time -f '%e %U %S' -o "$out.time" \
        "$venv/bin/python" "$here/reference_query.py" run --input "$input" --output "$out" \
        --master "local[$cores]" --events "$events" 2> "$out.log" | tee "$out.json"
    echo "== same windows as Sluice? (local[$cores])"
    "$venv/bin/python" "$here/reference_query.py" check --spark "$out/table" \
        --sluice "$sluice_table" 2>> "$out.log"
done

echo "== figures ($events events; Spark writes Parquet, Sluice Delta)"
"$venv/bin/python" - "$work" <<'EOF'
import json, re, sys
work = sys.argv[1]
def times(path):
    wall, user, system = map(float, open(path).read().split()[-3:])
    return wall, user + system
runs = re.findall(r"(\d+) threads?: (\d+) events in ([\d.]+) s = (\d+) events/s; CPU ([\d.]+) s",
                  open(f"{work}/sluice.out").read())
assert runs, "no Sluice figures in sluice.out"
events = int(runs[0][1])
# (engine, cores, query s, events/s, steady events/s, CPU s, CPU measured over, command s)
rows = [(f"Sluice, {t} thread{'s' if t != '1' else ''}", int(t), float(s), int(r), None, float(c), "process", None)
        for t, _, s, r, c in runs]
for cores in (1, 2):
    spark = json.loads(open(f"{work}/spark-local{cores}.json").read().splitlines()[-1])
    wall, _ = times(f"{work}/spark-local{cores}.time")
    rows.append((f"Spark local[{cores}]", cores, spark["query_seconds"], spark["events_per_second"],
                 spark["steady_events_per_second"], spark["query_cpu_seconds"], "query", wall))
print(f"{'engine':<18}{'query s':>8}{'events/s':>12}{'per core':>12}{'steady/s':>10}{'CPU s':>7} {'(of)':<8}{'µs CPU/event':>13}{'command s':>10}")
for name, cores, seconds, rate, steady, cpu, scope, wall in rows:
    steady = f"{steady:,}" if steady else "-"
    wall = f"{wall:.2f}" if wall else "-"
    print(f"{name:<18}{seconds:>8.2f}{rate:>12,}{rate // cores:>12,}{steady:>10}{cpu:>7.2f} {scope:<8}{cpu / events * 1e6:>13.2f}{wall:>10}")
sluice = [r for r in rows if r[0].startswith("Sluice")]
spark = [r for r in rows if r[0].startswith("Spark")]
for s_name, s_cores, _, s_rate, _, s_cpu, _, _ in sluice:
    for name, cores, _, rate, steady, cpu, _, _ in spark:
        if cores != s_cores:
            continue
        # One micro-batch has no steady rate (it excludes the first batch).
        versus_steady = f" ({s_rate / steady:.1f}x Spark's steady rate)" if steady else ""
        print(f"per core, {s_name} vs {name}: {s_rate / s_cores:,.0f} vs {rate / cores:,.0f} events/s = "
              f"{s_rate / rate:.1f}x{versus_steady}; {cpu / s_cpu:.1f}x less CPU per event")
one = [r for r in sluice if r[1] == 1]
for r in sluice:
    if one and r[1] > 1:
        print(f"Sluice {r[1]} threads vs 1: {r[3] / one[0][3]:.2f}x the events/s")
EOF
