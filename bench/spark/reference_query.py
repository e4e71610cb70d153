"""The reference query on Spark Structured Streaming, for comparison with Sluice.

    reference_query.py run   --input DIR --output DIR --master local[N] --events N
    reference_query.py check --spark DIR --sluice DELTA_TABLE

`run` reads the JSON-lines files of DIR (one file per micro-batch, oldest
first), computes 5-minute windows sliding every minute grouped by event_type
with a 2-minute watermark and a count, appends the windows to Parquet under
DIR/table (checkpoints in DIR/checkpoints) with trigger(availableNow=True),
and prints one JSON line of figures. The streaming query's wall and CPU time
run from start() to awaitTermination(); the JVM's and SparkSession's start-up
are outside them.

`check` compares the window rows of the two engines: row counts, rows only
one side has, rows whose counts differ, and a few rows side by side.
"""

import argparse
import json
import os
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

EVENT_SCHEMA = StructType(
    [
        StructField("timestamp", TimestampType()),
        StructField("event_type", StringType()),
        StructField("key", StringType()),
        StructField("value", DoubleType()),
    ]
)
WINDOW_KEY = ["window_start", "window_end", "event_type"]


def session(master, shuffle_partitions):
    return (
        SparkSession.builder.master(master)
        .appName("sluice-reference-query")
        .config("spark.driver.memory", "4g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        # With one stateful operator this only picks the watermark that drops
        # late events: off, it is the batch's own (as in Sluice); on (the
        # default since Spark 3.4), the previous batch's, so the late events
        # of the second batch would still be counted, in windows already
        # past the watermark.
        .config("spark.sql.streaming.statefulOperator.allowMultiple", "false")
        # The default of 200 state-store partitions is tuned for clusters;
        # one per core is what a user would set on one machine.
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .getOrCreate()
    )


def jvm_cpu_seconds(spark):
    """User + system CPU seconds of the driver JVM (local mode: all of Spark)."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the parenthesised command name; utime and stime are
        # fields 14 and 15 of the whole line.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args):
    cores = int(args.master.removeprefix("local[").removesuffix("]"))
    spark = session(args.master, cores)
    spark.sparkContext.setLogLevel("WARN")
    events = (
        spark.readStream.schema(EVENT_SCHEMA)
        .option("maxFilesPerTrigger", 1)
        .json(args.input)
    )
    windows = (
        events.withWatermark("timestamp", "2 minutes")
        .groupBy(F.window("timestamp", "5 minutes", "1 minute"), "event_type")
        .agg(F.count(F.lit(1)).alias("event_count"))
        .select(
            F.col("window.start").alias("window_start"),
            F.col("window.end").alias("window_end"),
            "event_type",
            "event_count",
        )
    )
    writer = (
        windows.writeStream.format("parquet")
        .outputMode("append")
        .option("path", os.path.join(args.output, "table"))
        .option("checkpointLocation", os.path.join(args.output, "checkpoints"))
        .trigger(availableNow=True)
    )
    cpu_before = jvm_cpu_seconds(spark)
    started = time.perf_counter()
    query = writer.start()
    query.awaitTermination()
    seconds = time.perf_counter() - started
    cpu = jvm_cpu_seconds(spark) - cpu_before
    progress = query.recentProgress
    batches = [
        {
            "events": p["numInputRows"],
            "ms": p["durationMs"]["triggerExecution"],
            "watermark": p.get("eventTime", {}).get("watermark"),
            "dropped": sum(
                op.get("numRowsDroppedByWatermark", 0)
                for op in p.get("stateOperators", [])
            ),
        }
        for p in progress
    ]
    rows_in = sum(b["events"] for b in batches)
    if rows_in != args.events:
        sys.exit(f"Spark read {rows_in} events, expected {args.events}")
    print(
        json.dumps(
            {
                "engine": "spark",
                "master": args.master,
                "events": rows_in,
                "micro_batches": len(progress),
                "query_seconds": round(seconds, 2),
                "events_per_second": round(rows_in / seconds),
                "query_cpu_seconds": round(cpu, 2),
                "jvm_cpu_seconds_total": round(jvm_cpu_seconds(spark), 2),
                # Without the first batch (JIT and code generation warm-up).
                "steady_events_per_second": round(
                    sum(b["events"] for b in batches[1:])
                    / sum(b["ms"] / 1000 for b in batches[1:])
                ),
                # (window, event_type) rows after partial aggregation.
                "rows_dropped_by_watermark": sum(b["dropped"] for b in batches),
                "batches": batches,
            }
        ),
        flush=True,
    )
    spark.stop()


def check(args):
    spark = session("local[2]", 2)
    spark.sparkContext.setLogLevel("WARN")
    ours = spark.read.parquet(args.spark).withColumnRenamed("event_count", "spark")
    theirs = (
        spark.read.parquet(args.sluice)
        .select(*WINDOW_KEY, "event_count")
        .withColumnRenamed("event_count", "sluice")
    )
    joined = ours.join(theirs, WINDOW_KEY, "full_outer").cache()
    report = {
        "spark_rows": ours.count(),
        "sluice_rows": theirs.count(),
        "only_spark": joined.filter(F.col("sluice").isNull()).count(),
        "only_sluice": joined.filter(F.col("spark").isNull()).count(),
        "counts_differ": joined.filter(F.col("spark") != F.col("sluice")).count(),
        "spark_events_counted": ours.agg(F.sum("spark")).first()[0],
        "sluice_events_counted": theirs.agg(F.sum("sluice")).first()[0],
    }
    print(json.dumps(report), flush=True)
    joined.orderBy(F.col("spark").isNotNull() & F.col("sluice").isNotNull(), *WINDOW_KEY).show(
        5, truncate=False
    )
    joined.orderBy(F.desc(WINDOW_KEY[0]), "event_type").show(5, truncate=False)
    spark.stop()
    if report["only_spark"] or report["only_sluice"] or report["counts_differ"]:
        sys.exit("the two engines' windows differ (see above)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_args = commands.add_parser("run")
    run_args.add_argument("--input", required=True)
    run_args.add_argument("--output", required=True)
    run_args.add_argument("--master", default="local[1]")
    run_args.add_argument("--events", type=int, required=True)
    check_args = commands.add_parser("check")
    check_args.add_argument("--spark", required=True)
    check_args.add_argument("--sluice", required=True)
    args = parser.parse_args()
    {"run": run, "check": check}[args.command](args)


if __name__ == "__main__":
    main()
