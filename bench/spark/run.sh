#!/usr/bin/env bash
# Manual benchmark, not part of CI: the reference query on Spark Structured
# Streaming (local[1] and local[2]) and on Sluice (the reference_query bench,
# one core) over the same events, with wall and CPU times and a check that
# both engines emit the same windows.
#
#   bench/spark/run.sh                              # 5,000,000 events
#   SLUICE_BENCH_EVENTS=1000000 bench/spark/run.sh
#
# Installs Java 17 (Debian) if `java` is missing and PySpark into
# $SLUICE_CACHE/spark-venv; keeps the data set in $SLUICE_CACHE/spark-bench.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/bench/spark"
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
venv="$cache/spark-venv"
events="${SLUICE_BENCH_EVENTS:-5000000}"
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
echo "== Sluice (cargo bench -p sluice-runner --bench reference_query, one core)"
/usr/bin/time -f '%e %U %S' -o "$work/sluice.time" "$bench" --bench | tee "$work/sluice.out"

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
sluice = re.search(r"(\d+) events in ([\d.]+) s = (\d+) events/s", open(f"{work}/sluice.out").read())
events, seconds, rate = int(sluice[1]), float(sluice[2]), int(sluice[3])
wall, cpu = times(f"{work}/sluice.time")
# (engine, query s, events/s, steady events/s, CPU s, CPU measured over, command s)
rows = [("Sluice, 1 core", seconds, rate, None, cpu, "process", wall)]
for cores in (1, 2):
    spark = json.loads(open(f"{work}/spark-local{cores}.json").read().splitlines()[-1])
    wall, _ = times(f"{work}/spark-local{cores}.time")
    rows.append((f"Spark local[{cores}]", spark["query_seconds"], spark["events_per_second"],
                 spark["steady_events_per_second"], spark["query_cpu_seconds"], "query", wall))
print(f"{'engine':<16}{'query s':>8}{'events/s':>11}{'steady/s':>10}{'CPU s':>7} {'(of)':<8}{'µs CPU/event':>13}{'command s':>10}")
for name, seconds, rate, steady, cpu, scope, wall in rows:
    steady = f"{steady:,}" if steady else "-"
    print(f"{name:<16}{seconds:>8.2f}{rate:>11,}{steady:>10}{cpu:>7.2f} {scope:<8}{cpu / events * 1e6:>13.2f}{wall:>10.2f}")
for name, _, rate, steady, cpu, _, _ in rows[1:]:
    # One micro-batch has no steady rate (it excludes the first batch).
    versus_steady = f" ({rows[0][2] / steady:.1f}x Spark's steady rate)" if steady else ""
    print(f"Sluice vs {name}: {rows[0][2] / rate:.1f}x the events/s{versus_steady}, {cpu / rows[0][4]:.1f}x less CPU per event")
EOF
