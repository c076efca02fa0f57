using System.Diagnostics;
using Grpc.Core;

namespace Kms.Bench;

/// <summary>What one measured step gave: throughput, latency percentiles, failures by status.</summary>
/// <param name="Shed">Calls answered UNAVAILABLE: by the server, or by the SDK (<paramref name="ShedByClient"/>).</param>
/// <param name="NotSent">Open loop only: calls the schedule asked for but the client did not send, because its bound on outstanding calls was reached (the server fell far behind).</param>
/// <param name="ShedByClient">Of <paramref name="Shed"/>, those the SDK did not send: KmsClientOptions.MaxConcurrentCalls were on the wire.</param>
internal sealed record StepResult(double OpsPerSecond, double P50, double P90, double P99, double P999, double Max, int Calls, int Errors, int Shed, int NotSent = 0, int ShedByClient = 0)
{
    public static StepResult From(double[] latencies, double seconds, int errors, int shed, double operationsPerCall = 1)
    {
        Array.Sort(latencies);
        return new StepResult(
            latencies.Length * operationsPerCall / seconds,
            Percentile(latencies, 0.50),
            Percentile(latencies, 0.90),
            Percentile(latencies, 0.99),
            Percentile(latencies, 0.999),
            latencies.Length == 0 ? 0 : latencies[^1],
            latencies.Length,
            errors,
            shed);
    }

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[(int)Math.Min(sorted.Length - 1, Math.Floor(p * sorted.Length))];
}

/// <summary>Closed and open loops over any async call.</summary>
internal static partial class LoadLoops
{
    /// <summary>
    /// A closed loop: <paramref name="concurrency"/> workers call back to back for
    /// <paramref name="duration"/>. Every call's latency is kept, failed ones too; UNAVAILABLE
    /// (shed) is counted apart from other failures.
    /// </summary>
    public static async Task<StepResult> ClosedAsync(int concurrency, TimeSpan duration, Func<Task> call, double operationsPerCall = 1)
    {
        var latencies = new List<double>[concurrency];
        var outcomes = new Outcomes();
        var stopwatch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async worker =>
        {
            await Task.Yield();
            var mine = latencies[worker] = new List<double>(200_000);
            while (stopwatch.Elapsed < duration)
            {
                var started = Stopwatch.GetTimestamp();
                await outcomes.CallAsync(call);

                mine.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
        }));
        var seconds = stopwatch.Elapsed.TotalSeconds;
        return StepResult.From(latencies.SelectMany(l => l).ToArray(), seconds, outcomes.Errors, outcomes.Shed, operationsPerCall) with { ShedByClient = outcomes.ShedByClient };
    }

    /// <summary>
    /// An open loop: calls are started on a fixed schedule of <paramref name="ratePerSecond"/>,
    /// whether or not earlier ones have answered, and each latency is measured from the time the
    /// call was <em>due</em> (so a stalled sender cannot hide queueing: no coordinated omission).
    /// At most <paramref name="maxOutstanding"/> calls are in flight; a call that would exceed it
    /// is not sent and counted apart (<see cref="StepResult.NotSent"/>). Throughput and latency
    /// are those of the calls served; shed and failed calls are counted apart.
    /// </summary>
    public static async Task<StepResult> OpenAsync(double ratePerSecond, TimeSpan duration, Func<Task> call, int maxOutstanding = 20_000)
    {
        var latencies = new double[(int)(ratePerSecond * duration.TotalSeconds) + 16];
        var outcomes = new Outcomes();
        int outstanding = 0, recorded = 0, notSent = 0;
        var frequency = Stopwatch.Frequency;
        var interval = frequency / ratePerSecond;
        var start = Stopwatch.GetTimestamp();
        var total = (long)(ratePerSecond * duration.TotalSeconds);
        var pending = new List<Task>((int)Math.Min(total, 1_000_000));

        // The schedule runs on a thread of its own that sleeps until the next call is due
        // (nanosleep: tens of microseconds late on Linux, and no CPU while it waits). It used to
        // be a loop of Task.Yield whenever the next call was under 2 ms away — always, above 500
        // calls/s — which kept one of this machine's two cores busy doing nothing, so an open
        // loop at "half of the peak" left the server almost no headroom (2026-12-01).
        // KMS_OPEN_LOOP_START=inline: the pacer thread starts each call itself (runs it to its first
        // await), as a caller that is already running would, rather than handing it to a pool thread
        // that must first be woken.
        Func<Func<Task>, Task> launch = Environment.GetEnvironmentVariable("KMS_OPEN_LOOP_START") == "inline"
            ? static body => body()
            : static body => Task.Run(body);
        var paced = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var pacer = new Thread(() =>
        {
            try
            {
                long sent = 0;
                while (sent < total)
                {
                    var now = Stopwatch.GetTimestamp();
                    var due = Math.Min(total, (long)((now - start) / interval) + 1);
                    for (; sent < due; sent++)
                    {
                        var dueAt = start + (long)(sent * interval);
                        if (Interlocked.Increment(ref outstanding) > maxOutstanding)
                        {
                            Interlocked.Decrement(ref outstanding);
                            notSent++;
                            continue;
                        }

                        pending.Add(launch(async () =>
                        {
                            var served = await outcomes.CallAsync(call);
                            Interlocked.Decrement(ref outstanding);
                            if (!served)
                            {
                                return;
                            }

                            var index = Interlocked.Increment(ref recorded) - 1;
                            if (index < latencies.Length)
                            {
                                latencies[index] = (Stopwatch.GetTimestamp() - dueAt) * 1000.0 / frequency;
                            }
                        }));
                    }

                    var wait = start + (long)(sent * interval) - Stopwatch.GetTimestamp();
                    if (sent < total && wait > 0)
                    {
                        _ = Native.usleep((uint)Math.Min(wait * 1_000_000 / frequency, 10_000));
                    }
                }

                paced.SetResult();
            }
            catch (Exception e)
            {
                paced.SetException(e);
            }
        })
        { IsBackground = true, Name = "open-loop pacer" };
        pacer.Start();
        await paced.Task;

        await Task.WhenAll(pending);
        var seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var count = Math.Min(recorded, latencies.Length);
        var result = StepResult.From(latencies[..count], seconds, outcomes.Errors, outcomes.Shed);

        // Throughput of an open loop is the schedule's, as long as it kept up.
        return result with { OpsPerSecond = count / Math.Max(duration.TotalSeconds, seconds), NotSent = notSent, ShedByClient = outcomes.ShedByClient };
    }

    private static partial class Native
    {
        [System.Runtime.InteropServices.LibraryImport("libc")]
        internal static partial int usleep(uint microseconds);
    }

    /// <summary>One place that runs a call and counts how it failed: UNAVAILABLE (shed) apart from other RPC errors.</summary>
    private sealed class Outcomes
    {
        public int Errors;
        public int Shed;
        public int ShedByClient;

        /// <summary>Runs the call; true if it was served.</summary>
        public async Task<bool> CallAsync(Func<Task> call)
        {
            try
            {
                await call();
                return true;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
            {
                Interlocked.Increment(ref Shed);
                if (e.Status.Detail.Contains("KmsClientOptions.MaxConcurrentCalls", StringComparison.Ordinal))
                {
                    Interlocked.Increment(ref ShedByClient);
                }
            }
            catch (RpcException)
            {
                Interlocked.Increment(ref Errors);
            }

            return false;
        }
    }
}
